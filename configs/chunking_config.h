// The `chunking` section: how sequences become chunks and how many chunks keep their activations.
#pragma once

#include <cstdint>
#include <string>

namespace chunkflow::configs {

struct ChunkingConfig {
  static constexpr const char* kSection = "chunking";

  int64_t chunk_size = 4096;
  int64_t resident_chunks = 1;
  bool pack_into_tail = true;
  // How a global batch becomes chunks: "chunkflow" (split + pack, the default), or one of the
  // baselines ChunkFlow is measured against, run by the same trainer: "pack_to_max" (sequences
  // packed into chunks of chunk_size, never split: Megatron's packing to the maximum context
  // length) and "pad_to_longest" (micro-batches of micro_batch_sequences consecutive sequences,
  // each padded to its longest: a plain Hugging Face training loop).
  std::string strategy = "chunkflow";
  int64_t micro_batch_sequences = 1;
  // Full activation recomputation (Megatron's --recompute-granularity full): a standalone chunk
  // keeps only each decoder layer's input and recomputes the layer during its backward.
  bool recompute_layers = false;

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
    visit("strategy", self.strategy, "chunkflow, or a baseline: pack_to_max, pad_to_longest");
    visit("micro_batch_sequences", self.micro_batch_sequences, "sequences per padded micro-batch (pad_to_longest)");
    visit("recompute_layers", self.recompute_layers,
          "standalone chunks keep only each layer's input and recompute the layer in backward");
  }
};

}  // namespace chunkflow::configs
