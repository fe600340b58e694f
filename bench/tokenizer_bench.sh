#!/usr/bin/env bash
# Tokenizing speed of `chunkflow-data prepare --tokenizer` against Hugging Face `tokenizers` (Rust),
# in one run on this machine: a Qwen2-style byte-level BPE tokenizer (600 tokens, NFC, built offline
# by tests/data/bpe_tokenizer_test.py's recipe), 20,000 texts of 20-400 words (46 MB of JSONL).
# ChunkFlow: the whole prepare (read JSONL, tokenize, write the dataset) on 1 thread and on every
# core; tokenizers: encode() one text at a time (1 thread) and encode_batch() (every core), texts
# already in memory. Prints a Markdown table with the ratios.
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
