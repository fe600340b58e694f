// The tiny training run; see tiny_run.h.
#include "tests/support/tiny_run.h"

#include "data/synthetic.h"

namespace chunkflow::testing {

configs::Config tiny_run(const TempDir& dir) {
  data::SynthOptions synth;
  synth.sequences = 300;
  synth.vocab_size = 64;
  synth.scale = 0.05;  // median 10 tokens, tail from 205 up to max_length
  synth.max_length = 300;
  synth.tail_fraction = 0.05;
  data::write_synthetic_dataset(dir.file("data/synth"), synth, false);

  configs::Config config;
  config.run.name = "test";
  config.run.output_dir = dir.path();
  config.run.steps = 20;
  config.run.seed = 7;
  config.model.vocab_size = 64;
  config.model.hidden_size = 32;
  config.model.intermediate_size = 48;
  config.model.num_hidden_layers = 2;
  config.model.num_attention_heads = 4;
  config.model.num_key_value_heads = 2;
  config.model.initializer_range = 0.1;
  config.data.path = dir.file("data/synth");
  config.data.batch_tokens = 400;
  config.chunking.chunk_size = 24;
  config.chunking.resident_chunks = 1;
  config.optim.lr = 1e-2;
  config.optim.min_lr = 1e-3;
  config.optim.warmup_steps = 3;
  config.optim.max_grad_norm = 0.5;  // small, so clipping is exercised
  config.logging.progress = "lines";
  config.validate();
  return config;
}

}  // namespace chunkflow::testing
