#!/usr/bin/env python3
"""chunkflow-data tokenize against Hugging Face `tokenizers`, token for token.

Builds three byte-level BPE tokenizers offline with the `tokenizers` library, configured as GPT-2,
Llama 3 (its split regex, ignore_merges) and Qwen2 (its split regex, NFC normalizer) ship theirs,
each with chat special tokens; encodes a set of awkward texts (contractions in any case, digit
runs, whitespace and newline runs, CR LF, Unicode letters and numbers of many scripts, emoji,
no-break and ideographic spaces, special tokens inside text, text that NFC changes: combining
marks to compose and reorder, Hangul jamo, singletons) with both, and fails on the first
difference, without and with the post-processor's special tokens (Llama 3's <|begin_of_text|>);
then 400 random strings per tokenizer from code points where tokenizing is tricky.
`chunkflow-data prepare --tokenizer --append-eos` then writes those texts as a dataset
holding the same ids plus the end-of-text id, with 1 thread and with 3 (same bytes), and names
file:line for a line whose "text" is not a string. Also checks that an unsupported pre-tokenizer
is refused, named in the message.

    bpe_tokenizer_test.py CHUNKFLOW_DATA
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|begin_of_text|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. I'm sure they're here; we'll see, won't we?",
    "Numbers: 1234567890, 3.14159, 2024-12-04, $1,000,000.00 and 42%.",
    "def main():\n    return [x * 2 for x in range(10)]\n\n\nif __name__ == '__main__':\n    main()\n",
    "Café, naïve, façade, coöperate; Ωmega and ΣΙΣΥΦΟΣ; Привет, мир! Grüße aus München.",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀👍🏽🎉 and symbols ©®™ — “quotes” ‘single’ … «guillemets»",
    "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\nHi! How can I help?<|im_end|>\n",
    "Tabs\tand\t\ttabs, spaces    and   more\r\nwindows\r\nlines\n\n\n   indented",
] * 20

TEXTS = [
    "", " ", "   ", "\n", "\n\n", "\r\n", " \n \n ", "a", " a", "a ", "  a  ", "hello world",
    "I'm", "I'M", "DON'T", "they'RE here", "we'Ll", "you'VE", "it'd", "'s", "'hello'", "rock'n'roll",
    "12345", "1234567", "3.14159", "x2y3", "$100.00", "2024-12-04", "١٢٣٤ digits", "Ⅻ roman", "½ ¾",
    "a  b", "a   b", "a\tb", "a\t\tb", "a\n\nb", "a \n b", "a\r\n\r\nb", "end   ", "end\n  ",
    "   lead", "\t\tlead", "hello!!!", "hello!!!\n\n", "(hello) [world] {x}", "...", " ...", "--flag=1",
    "café naïve", "ΣΙΣΥΦΟΣ", "Привет, мир!", "日本語のテキスト", "中文，标点。", "한국어 텍스트",
    "emoji 😀👍🏽🎉!", "😀", "x😀y", "©®™", "“quoted”", "a\u00a0b", "a\u3000b", "x\u2028y", "x\u0085y",
    "a\u200bb", "\u202fnarrow", "mixed 中文and English123", "tab\tat\tend\t",
    "<|im_start|>user\nhi<|im_end|>\n", "<|im_start|><|im_end|>", "text<|endoftext|>more", "<|im_start",
    "def f(x):\n    return x + 1\n", "    indented code\n\tand tabs", "a" * 300, "ab " * 100,
    # NFC: compose, reorder marks, Hangul, singletons, marks with no starter, nothing to do.
    "cafe\u0301", "e\u0301\u0301", "a\u0323\u0302", "a\u0302\u0323", "\u212b ring", "\uf900\uf901",
    "\u1100\u1161\u11a8", "\uac00\u11a8", "\u0344", "\u0301start", "\u00c5\u0301", "\u0915\u093c",
    "\ufb01 ligature", "o\u0308\u0304 and \u1e9b\u0323", "\u0958\u0959",
] + CORPUS[:8]


def random_texts(count, seed):
    """Random strings from code points where tokenizing is tricky: letters and digits of several
    scripts, combining marks (which NFC composes and reorders), Hangul syllables and jamo,
    compatibility ideographs, whitespace of every kind, punctuation, emoji."""
    import random
    pools = [range(0x20, 0x7F), range(0xC0, 0x250), range(0x300, 0x370), range(0x391, 0x3CA), range(0x400, 0x460),
             range(0x591, 0x5C8), range(0x900, 0x97F), range(0x1100, 0x1200), range(0xAC00, 0xAC40),
             range(0x1E00, 0x1F00), range(0x2000, 0x2030), range(0x3000, 0x3010), range(0x4E00, 0x4E40),
             range(0xF900, 0xF940), range(0xFF10, 0xFF5F), range(0x1F600, 0x1F650), [0x09, 0x0A, 0x0D, 0x85, 0xA0, 0x2028]]
    generator = random.Random(seed)
    texts = []
    for _ in range(count):
        length = generator.randint(1, 40)
        texts.append("".join(chr(generator.choice(generator.choice(pools))) for _ in range(length)))
    return texts


def build(kind):
    if kind == "gpt2":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
        pattern = LLAMA3 if kind == "llama3" else QWEN2
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        if kind == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    if kind == "llama3":  # as Llama 3 ships it: <|begin_of_text|> before every text
        begin = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", begin)]),
        ])
    return tokenizer


def chunkflow_ids(tool, tokenizer_json, texts, work, *flags):
    path = os.path.join(work, "texts.jsonl")
    with open(path, "w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    result = subprocess.run([tool, "tokenize", "--tokenizer", tokenizer_json, "--input", path, *flags],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["ids"] for line in result.stdout.splitlines()]


MEGATRON_DTYPES = {1: (1, False), 2: (1, True), 3: (2, True), 4: (4, True), 5: (8, True), 8: (2, False)}


def read_dataset(prefix):
    """Sequences of a Megatron .bin/.idx pair (data/indexed_dataset.h)."""
    with open(prefix + ".idx", "rb") as idx:
        assert idx.read(9) == b"MMIDIDX\x00\x00"
        _version, dtype_code = struct.unpack("<QB", idx.read(9))
        count, _documents = struct.unpack("<QQ", idx.read(16))
        sizes = struct.unpack(f"<{count}i", idx.read(4 * count))
        pointers = struct.unpack(f"<{count}q", idx.read(8 * count))
    data = open(prefix + ".bin", "rb").read()
    width, signed = MEGATRON_DTYPES[dtype_code]
    return [[int.from_bytes(data[p + k * width:p + (k + 1) * width], "little", signed=signed) for k in range(n)]
            for p, n in zip(pointers, sizes)]


def check_prepare(tool, work, tokenizer):
    folder = os.path.join(work, "qwen2")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as config:
        json.dump({"eos_token": "<|endoftext|>"}, config)
    texts = [text for text in TEXTS if text]  # an empty text would be an empty sequence
    source = os.path.join(work, "texts.jsonl")
    with open(source, "w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps({"text": text}) + "\n")
    eos = tokenizer.token_to_id("<|endoftext|>")
    written = {}
    for threads in (1, 3):
        prefix = os.path.join(work, f"prepared{threads}", "data")
        subprocess.run([tool, "prepare", "--input", source, "--output", prefix, "--tokenizer", folder, "--append-eos",
                        "--threads", str(threads), "--quiet"], check=True, capture_output=True)
        written[threads] = open(prefix + ".bin", "rb").read() + open(prefix + ".idx", "rb").read()
        sequences = read_dataset(prefix)
        assert len(sequences) == len(texts), (len(sequences), len(texts))
        for text, ids in zip(texts, sequences):
            assert ids == tokenizer.encode(text, add_special_tokens=False).ids + [eos], f"prepare: {text!r}"
    assert written[1] == written[3], "the dataset depends on --threads"
    # show: the sequences decoded as tokenizers decodes them (special tokens kept).
    shown = subprocess.run([tool, "show", "--data", os.path.join(work, "prepared1", "data"), "--tokenizer", folder,
                            "--count", str(len(texts)), "--json"], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in shown.splitlines()]
    assert len(rows) == len(texts), len(rows)
    for text, row in zip(texts, rows):
        ids = tokenizer.encode(text, add_special_tokens=False).ids + [eos]
        assert row["text"] == tokenizer.decode(ids, skip_special_tokens=False), (text, row["text"])
        assert row["tokens"] == len(ids) and row["loss_tokens"] == len(ids) and row["marked"] == row["text"], row
    # A loss mask: show marks the tokens without loss, each run decoded on its own (a character cut
    # between runs decodes to U+FFFD, as tokenizers decodes the same ids).
    ids = tokenizer.encode("Q: 😀👍🏽 ok? A: fine", add_special_tokens=False).ids
    cut = next((k for k in range(1, len(ids)) if "\ufffd" in tokenizer.decode(ids[:k])), len(ids) // 2)
    masked = os.path.join(work, "masked.jsonl")
    with open(masked, "w") as out:
        out.write(json.dumps({"input_ids": ids, "loss_mask": [0] * cut + [1] * (len(ids) - cut)}) + "\n")
    subprocess.run([tool, "prepare", "--input", masked, "--output", os.path.join(work, "masked", "data"), "--quiet"],
                   check=True, capture_output=True)
    shown = subprocess.run([tool, "show", "--data", os.path.join(work, "masked", "data"), "--tokenizer", folder, "--json"],
                           check=True, capture_output=True, text=True).stdout
    row = json.loads(shown)
    want = "[[" + tokenizer.decode(ids[:cut]) + "]]" + tokenizer.decode(ids[cut:])
    assert row["marked"] == want and row["loss_tokens"] == len(ids) - cut, (row, want)
    with open(source, "a", encoding="utf-8") as out:
        out.write(json.dumps({"text": 42}) + "\n")
    result = subprocess.run([tool, "prepare", "--input", source, "--output", os.path.join(work, "bad", "data"),
                             "--tokenizer", folder, "--quiet"], capture_output=True, text=True)
    expected = f'texts.jsonl:{len(texts) + 1}: "text" is 42, expected a string'
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    print(f"prepare --tokenizer --append-eos: {len(texts)} texts written as tokenizers' ids + <|endoftext|>, "
          "the same bytes on 1 and 3 threads; show decodes them as tokenizers does and marks no-loss tokens")


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        for kind in ("gpt2", "llama3", "qwen2"):
            tokenizer = build(kind)
            folder = os.path.join(work, kind)
            os.makedirs(folder)
            tokenizer.save(os.path.join(folder, "tokenizer.json"))
            texts = TEXTS + random_texts(400, seed=len(kind))
            got = chunkflow_ids(tool, folder, texts, work)
            assert len(got) == len(texts), (kind, len(got))
            for text, ids in zip(texts, got):
                want = tokenizer.encode(text, add_special_tokens=False).ids
                assert ids == want, f"{kind}: {text!r}\n  chunkflow    {ids}\n  tokenizers   {want}"
            print(f"{kind}: {len(texts)} texts ({len(TEXTS)} chosen, the rest random), {sum(map(len, got))} tokens, "
                  "equal to tokenizers")
            # With the post-processor's special tokens, as tokenizers' encode() adds by default.
            with_specials = chunkflow_ids(tool, folder, TEXTS, work, "--add-special-tokens")
            for text, ids in zip(TEXTS, with_specials):
                want = tokenizer.encode(text).ids
                assert ids == want, f"{kind} with special tokens: {text!r}\n  chunkflow  {ids}\n  tokenizers {want}"
            if kind == "llama3":
                assert with_specials[1][0] == tokenizer.token_to_id("<|begin_of_text|>"), with_specials[1]
            if kind == "qwen2":
                check_prepare(tool, work, tokenizer)

        # Invalid UTF-8 (a stray continuation byte, an overlong form, an encoded surrogate) is refused.
        for raw, at in ((b"ab\x80", 2), (b"x\xc0\x80", 1), (b"\xed\xa0\x80", 0), (b"\xf4\x90\x80\x80", 0)):
            result = subprocess.run([tool.encode(), b"tokenize", b"--tokenizer", os.path.join(work, "qwen2").encode(),
                                     b"--text", raw], capture_output=True)
            assert result.returncode == 1 and f"invalid UTF-8 at byte {at}".encode() in result.stderr, (raw, result.stderr)
        # An unsupported pre-tokenizer is refused by name, not approximated.
        other = build("gpt2")
        other.pre_tokenizer = pre_tokenizers.Whitespace()
        other.save(os.path.join(work, "whitespace.json"))
        result = subprocess.run([tool, "tokenize", "--tokenizer", os.path.join(work, "whitespace.json"), "--text", "x"],
                                capture_output=True, text=True)
        assert result.returncode != 0 and "pre_tokenizer" in result.stderr and "is not supported" in result.stderr, \
            result.stderr
        print("refusal: an unsupported pre-tokenizer, named")


if __name__ == "__main__":
    main()
