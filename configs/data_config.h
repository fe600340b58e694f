// The `data` section: which indexed dataset to read and how large a global batch is.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct DataConfig {
  static constexpr const char* kSection = "data";

  std::string path;            // prefix of <path>.idx / <path>.bin; required
  // "": <path>_loss_mask when it exists (chunkflow-data prepare writes it), else every token but a
  // sequence's last carries loss; "none": every such token, mask or not; else a mask prefix.
  std::string loss_mask_path;
  int64_t batch_sequences = 0;
  int64_t batch_tokens = 65536;
  bool shuffle = true;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming data.<key> when a rule is broken.
  void validate() const;

  // The loss-mask prefix this config trains with ("" = none): loss_mask_path resolved as above.
  std::string resolved_loss_mask() const;

  bool operator==(const DataConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("path", self.path, "indexed dataset prefix (<path>.idx, <path>.bin)");
    visit("loss_mask_path", self.loss_mask_path,
          "loss-mask prefix; \"\" = <path>_loss_mask if it exists, else all tokens; none = all tokens");
    visit("batch_sequences", self.batch_sequences, "sequences per global batch (or 0)");
    visit("batch_tokens", self.batch_tokens, "tokens per global batch (or 0)");
    visit("shuffle", self.shuffle, "shuffle sequence order each epoch");
  }
};

}  // namespace chunkflow::configs
