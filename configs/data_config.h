// The `data` section: which indexed dataset to read and how large a global batch is.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct DataConfig {
  static constexpr const char* kSection = "data";

  std::string path;            // prefix of <path>.idx / <path>.bin; required
  std::string loss_mask_path;  // "": every token but a sequence's last carries loss
  int64_t batch_sequences = 0;
  int64_t batch_tokens = 65536;
  bool shuffle = true;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming data.<key> when a rule is broken.
  void validate() const;

  bool operator==(const DataConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("path", self.path, "indexed dataset prefix (<path>.idx, <path>.bin)");
    visit("loss_mask_path", self.loss_mask_path, "indexed loss-mask prefix; \"\" = all tokens");
    visit("batch_sequences", self.batch_sequences, "sequences per global batch (or 0)");
    visit("batch_tokens", self.batch_tokens, "tokens per global batch (or 0)");
    visit("shuffle", self.shuffle, "shuffle sequence order each epoch");
  }
};

}  // namespace chunkflow::configs
