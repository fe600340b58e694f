#!/usr/bin/env bash
# Fine-tune a Hugging Face model on your own chat data with ChunkFlow and export it back, end to
# end, on a tiny random Qwen2 made here (no download). With a real model, only the model folder and
# the chat file change:
#   1. a model folder: config.json + model.safetensors from transformers, tokenizer.json from the
#      `tokenizers` library, tokenizer_config.json with a ChatML chat template;
#   2. chat data, one conversation per line: {"messages": [{"role": ..., "content": ...}, ...]};
#   3. chunkflow-data prepare renders each conversation with the model's chat template, tokenizes
#      it with the model's tokenizer and writes the loss mask (assistant turns only); show prints a
#      conversation back with the tokens that carry no loss between [[ and ]];
#   4. chunkflow-train fine-tunes the model (model.init_from) on that data, with a checkpoint every
#      10 steps (the loss mask beside the dataset is used without a config key);
#   5. chunkflow-export turns the last checkpoint into a Hugging Face folder (bfloat16) with the
#      model's tokenizer and chat template;
#   6. transformers loads the export, and its apply_chat_template gives the ids prepare wrote.
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

echo "== 1. a tiny Qwen2 model folder (random weights, its own tokenizer and chat template)"
"$python" - "$work/base" "$work/chat.jsonl" <<'PY'
import json, os, random, sys
import torch, transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

folder, chat_path = sys.argv[1], sys.argv[2]
# 2. the chat data: additions, some conversations many turns long (the long tail).
generator = random.Random(0)
def turn():
    a, b = generator.randint(0, 99), generator.randint(0, 99)
    return [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": f"{a} + {b} = {a + b}."}]
chats = []
for index in range(300):
    turns = generator.choice([1, 1, 1, 2, 3]) if index % 50 else 40
    messages = [{"role": "system", "content": "You add numbers."}]
    for _ in range(turns):
        messages += turn()
    chats.append({"messages": messages})
with open(chat_path, "w") as out:
    for chat in chats:
        out.write(json.dumps(chat) + "\n")

# The tokenizer: byte-level BPE with Qwen2's split pattern and ChatML's special tokens.
tokenizer = Tokenizer(models.BPE())
pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tokenizer.decoder = decoders.ByteLevel()
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tokenizer.train_from_iterator([m["content"] for c in chats for m in c["messages"]],
                              trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
os.makedirs(folder, exist_ok=True)
tokenizer.save(f"{folder}/tokenizer.json")
template = ("{% for message in messages %}{{ '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
with open(f"{folder}/tokenizer_config.json", "w") as out:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
               "chat_template": template}, out, indent=2)
config = transformers.Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                  eos_token_id=tokenizer.token_to_id("<|im_end|>"), tie_word_embeddings=False)
torch.manual_seed(0)
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
print(f"wrote {folder} (tokenizer: {tokenizer.get_vocab_size()} tokens) and {len(chats)} conversations to {chat_path}")
PY

echo "== 2-3. chat data -> dataset with the model's chat template; loss on assistant turns"
"$bin/chunkflow-data" prepare --input "$work/chat.jsonl" --output "$work/data/chat" --tokenizer "$work/base" --quiet
"$bin/chunkflow-data" show --data "$work/data/chat" --tokenizer "$work/base" --sequence 1

echo "== 4. fine-tune it on chunks"
printf 'run:\n  name: finetune\n' >"$work/run.yaml"
"$bin/chunkflow-train" --config "$work/run.yaml" --set run.output_dir="$work/runs" \
  --set model.init_from="$work/base" --set data.path="$work/data/chat" --set data.batch_tokens=4096 \
  --set chunking.chunk_size=256 --set run.steps=40 --set checkpoint.interval=10 --set optim.lr=3e-3 \
  --set logging.interval=10

echo "== 5. export the last checkpoint"
"$bin/chunkflow-export" --checkpoint "$work/runs/finetune/checkpoints" --output "$work/export" --dtype bfloat16

echo "== 6. transformers loads the export and its chat template"
"$python" - "$work/export" "$work/chat.jsonl" "$work/data/chat" "$work/runs/finetune/metrics.jsonl" "$repo_root/bench" <<'PY'
import json, sys
import torch, transformers
export, chat_path, prefix, metrics, bench = sys.argv[1:6]
sys.path.insert(0, bench)
from hf_peer import IndexedDataset  # the project's Python reader of .bin/.idx datasets
tokenizer = transformers.AutoTokenizer.from_pretrained(export)
model = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
chat = json.loads(open(chat_path).readline())
ids = tokenizer.apply_chat_template(chat["messages"], tokenize=True)
written = IndexedDataset(prefix).read(0).tolist()  # the first sequence prepare wrote
assert written == ids, f"prepare wrote {written}, apply_chat_template gives {ids}"
losses = [json.loads(line)["loss"] for line in open(metrics)]
prompt = tokenizer.apply_chat_template(chat["messages"][:2], add_generation_prompt=True, return_tensors="pt")
answer = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print(f"transformers loaded {export}: apply_chat_template gives the {len(ids)} ids prepare wrote for conversation 0; "
      f"training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logged steps")
print(f"asked {chat['messages'][1]['content']!r}, the tuned model answers "
      f"{tokenizer.decode(answer[0, prompt.shape[1]:], skip_special_tokens=True)!r}")
PY
