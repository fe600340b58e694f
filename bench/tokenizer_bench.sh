#!/usr/bin/env bash
# Tokenizing speed of `chunkflow-data prepare --tokenizer` against Hugging Face `tokenizers` (Rust),
# in one run on this machine: a Qwen2-style byte-level BPE tokenizer (600 tokens, NFC, built offline
# by tests/data/bpe_tokenizer_test.py's recipe), 20,000 texts of 20-400 words (46 MB of JSONL).
# ChunkFlow: the whole prepare (read JSONL, tokenize, write the dataset) on 1 thread and on every
# core; tokenizers: encode() one text at a time (1 thread) and encode_batch() (every core), texts
# already in memory. Prints a Markdown table with the ratios.
# Then chat data: 5,000 conversations of 1-6 exchanges rendered by the ChatML-style template of
# tests/data/chat_template_test.py: ChunkFlow's prepare (render, tokenize, assistant-only loss mask
# by incremental rendering, write) against transformers' apply_chat_template(tokenize=True), one
# conversation at a time, without and with return_assistant_tokens_mask (on the same template with
# {% generation %} blocks, which that needs).
#   bench/tokenizer_bench.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
python="${CHUNKFLOW_VENV:-$cache_root/venv}/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
"$python" - "$repo_root" <<'PY'
import json, random, sys
sys.path.insert(0, f"{sys.argv[1]}/tests/data")
import bpe_tokenizer_test as recipe
recipe.build("qwen2").save("tokenizer.json")
random.seed(1)
words = " ".join(recipe.CORPUS).split()
with open("texts.jsonl", "w") as out:
    for _ in range(20000):
        out.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(random.randint(20, 400)))}) + "\n")
PY
seconds() { local start="$EPOCHREALTIME"; "$@" >/dev/null; awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }'; }
ours_1=$(seconds "$build_dir/bin/chunkflow-data" prepare --input texts.jsonl --output one/d --tokenizer tokenizer.json --quiet --threads 1)
ours_all=$(seconds "$build_dir/bin/chunkflow-data" prepare --input texts.jsonl --output all/d --tokenizer tokenizer.json --quiet)
"$python" - "$ours_1" "$ours_all" <<'PY'
import json, os, sys, time
from tokenizers import Tokenizer
ours_1, ours_all = float(sys.argv[1]), float(sys.argv[2])
tokenizer = Tokenizer.from_file("tokenizer.json")
texts = [json.loads(line)["text"] for line in open("texts.jsonl")]
start = time.time()
tokens = sum(len(tokenizer.encode(text, add_special_tokens=False).ids) for text in texts)
hf_1 = time.time() - start
start = time.time()
tokenizer.encode_batch(texts, add_special_tokens=False)
hf_all = time.time() - start
cores = os.cpu_count()
print(f"{tokens:,} tokens, {cores} cores")
print("| | 1 thread | every core |")
print("| --- | ---: | ---: |")
print(f"| ChunkFlow prepare (read, tokenize, write) | {ours_1:.2f} s | {ours_all:.2f} s |")
print(f"| tokenizers encode / encode_batch (in memory) | {hf_1:.2f} s | {hf_all:.2f} s |")
print(f"| tokenizers time / ChunkFlow time | {hf_1 / ours_1:.2f} | {hf_all / ours_all:.2f} |")
PY

"$python" - "$repo_root" <<'PY'
import json, random, sys
sys.path.insert(0, f"{sys.argv[1]}/tests/data")
import chat_template_test as recipe
folder, _ = recipe.write_tokenizer(".", "chat_model", recipe.CHATML)
recipe.write_tokenizer(".", "chat_model_tagged", recipe.CHATML_TAGGED)
random.seed(2)
from bpe_tokenizer_test import CORPUS
words = " ".join(CORPUS).split()
def text():
    return " ".join(random.choice(words) for _ in range(random.randint(5, 120)))
with open("chats.jsonl", "w") as out:
    for _ in range(5000):
        messages = [{"role": "system", "content": text()}] if random.random() < 0.5 else []
        for _ in range(random.randint(1, 6)):
            messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
        out.write(json.dumps({"messages": messages}) + "\n")
PY
chat_1=$(seconds "$build_dir/bin/chunkflow-data" prepare --input chats.jsonl --output chat_one/d --tokenizer chat_model --quiet --threads 1)
chat_all=$(seconds "$build_dir/bin/chunkflow-data" prepare --input chats.jsonl --output chat_all/d --tokenizer chat_model --quiet)
"$python" - "$chat_1" "$chat_all" <<'PY'
import json, os, sys, time
from transformers import AutoTokenizer
ours_1, ours_all = float(sys.argv[1]), float(sys.argv[2])
chats = [json.loads(line)["messages"] for line in open("chats.jsonl")]
plain = AutoTokenizer.from_pretrained("chat_model")
tagged = AutoTokenizer.from_pretrained("chat_model_tagged")
start = time.time()
tokens = sum(len(plain.apply_chat_template(chat, tokenize=True)) for chat in chats)
hf_plain = time.time() - start
start = time.time()
for chat in chats:
    tagged.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
hf_masked = time.time() - start
print(f"\nchat: {len(chats):,} conversations, {tokens:,} tokens, {os.cpu_count()} cores")
print("| | 1 thread | every core |")
print("| --- | ---: | ---: |")
print(f"| ChunkFlow prepare (render, tokenize, assistant mask, write) | {ours_1:.2f} s | {ours_all:.2f} s |")
print(f"| transformers apply_chat_template(tokenize=True) | {hf_plain:.2f} s | |")
print(f"| transformers ... with return_assistant_tokens_mask | {hf_masked:.2f} s | |")
print(f"| transformers (with mask) time / ChunkFlow time | {hf_masked / ours_1:.2f} | {hf_masked / ours_all:.2f} |")
PY
