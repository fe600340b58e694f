#!/usr/bin/env bash
# Fine-tune a Hugging Face model with ChunkFlow and export it back, end to end, on a tiny random
# Llama that `transformers` builds here (no download). With a real model, only model.init_from and
# the dataset change:
#   1. transformers writes a Llama directory (config.json, model.safetensors, generation config);
#   2. chunkflow-train fine-tunes it (model.init_from) on a synthetic long-tail dataset, with a
#      checkpoint every 5 steps;
#   3. chunkflow-export turns the last checkpoint into a Hugging Face directory (bfloat16);
#   4. transformers loads the export and scores a sequence.
# Usage: scripts/hf_finetune_example.sh [work folder, default runs/hf_example]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/scripts/env.sh"
work="${1:-$repo_root/runs/hf_example}"
bin="${CHUNKFLOW_BIN:-$build_dir/bin}"
python="${CHUNKFLOW_PYTHON:-$cache_root/venv/bin/python}"
for tool in chunkflow-train chunkflow-data chunkflow-export; do
  [ -x "$bin/$tool" ] || { echo "hf_finetune_example: $bin/$tool not built; run scripts/test.sh or scripts/demo.sh first" >&2; exit 1; }
done
rm -rf "$work" && mkdir -p "$work"

echo "== 1. a tiny random Llama from transformers"
"$python" - "$work/base" <<'PY'
import sys, torch, transformers
config = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                  bos_token_id=0, eos_token_id=1)
torch.manual_seed(0)
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1], safe_serialization=True)
print("wrote", sys.argv[1])
PY

echo "== 2. fine-tune it on chunks"
"$bin/chunkflow-data" synth --output "$work/data/longtail" --sequences 400 --scale 0.1 --max-length 2048 \
  --vocab-size 512 --quiet
printf 'run:\n  name: finetune\n' >"$work/run.yaml"
"$bin/chunkflow-train" --config "$work/run.yaml" --set run.output_dir="$work/runs" \
  --set model.init_from="$work/base" --set data.path="$work/data/longtail" --set data.batch_tokens=4096 \
  --set chunking.chunk_size=256 --set run.steps=10 --set checkpoint.interval=5 --set optim.lr=1e-3 \
  --set logging.interval=5

echo "== 3. export the last checkpoint"
"$bin/chunkflow-export" --checkpoint "$work/runs/finetune/checkpoints" --output "$work/export" --dtype bfloat16

echo "== 4. transformers loads the export"
"$python" - "$work/export" <<'PY'
import sys, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.tensor([[0, 17, 42, 99, 3, 250, 7]])
loss = model(ids, labels=ids).loss.item()
print(f"transformers loaded {sys.argv[1]} ({sum(p.numel() for p in model.parameters())} parameters); loss on a sample {loss:.4f}")
PY
