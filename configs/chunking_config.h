// The `chunking` section: how sequences become chunks and how many chunks keep their activations.
#pragma once

#include <cstdint>

namespace chunkflow::configs {

struct ChunkingConfig {
  static constexpr const char* kSection = "chunking";

  int64_t chunk_size = 4096;
  int64_t resident_chunks = 1;
  bool pack_into_tail = true;

  template <typename Visitor>
  void visit_fields(Visitor&& visit) { fields(*this, visit); }
  template <typename Visitor>
  void visit_fields(Visitor&& visit) const { fields(*this, visit); }

  // Throws ConfigError naming chunking.<key> when a rule is broken.
  void validate() const;

  bool operator==(const ChunkingConfig&) const = default;

 private:
  template <typename Self, typename Visitor>
  static void fields(Self& self, Visitor& visit) {
    visit("chunk_size", self.chunk_size, "tokens per chunk (C)");
    visit("resident_chunks", self.resident_chunks,
          "chunks of a split sequence that keep activations (K); the rest are recomputed");
    visit("pack_into_tail", self.pack_into_tail,
          "pack short sequences into the last chunk of a split sequence");
  }
};

}  // namespace chunkflow::configs
