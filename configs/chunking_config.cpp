// Rules of the `chunking` section; see chunking_config.h.
#include "configs/chunking_config.h"

#include "configs/config_error.h"

namespace chunkflow::configs {

void ChunkingConfig::validate() const {
  check_field(chunk_size > 0, "chunking.chunk_size", "> 0", chunk_size);
  check_field(resident_chunks >= 1, "chunking.resident_chunks", ">= 1", resident_chunks,
              "the last chunk of a sequence always keeps its activations");
  check_one_of("chunking.strategy", strategy, {"chunkflow", "pack_to_max", "pad_to_longest"});
  check_field(micro_batch_sequences >= 1, "chunking.micro_batch_sequences", ">= 1", micro_batch_sequences);
}

}  // namespace chunkflow::configs
