#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): a few small, valid
inputs per parser, built here byte by byte from the formats' specifications so that each seed
says what it covers. Standard library only. Run from anywhere:

    python3 tests/fuzz/make_seeds.py

The files are committed; rerun after changing a format, then check `git diff --stat`.
"""
import json
import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def sections(*parts):
    """fuzz_support.h's Sections: each part is a u32 little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(part)) + part for part in parts)


# --- Megatron indexed dataset (data/indexed_dataset.h) -----------------------------------------
DTYPES = {"uint8": (1, "B"), "int8": (2, "b"), "int16": (3, "h"), "int32": (4, "i"),
          "int64": (5, "q"), "float64": (6, "d"), "float32": (7, "f"), "uint16": (8, "H")}


def indexed_dataset(dtype, documents):
    """(idx, bin) for `documents`, each a list of sequences (lists of token values)."""
    code, fmt = DTYPES[dtype]
    itemsize = struct.calcsize(fmt)
    sequences = [sequence for document in documents for sequence in document]
    data = b"".join(struct.pack("<%d%s" % (len(s), fmt), *s) for s in sequences)
    pointers, at = [], 0
    for sequence in sequences:
        pointers.append(at)
        at += len(sequence) * itemsize
    doc_indices, count = [0], 0
    for document in documents:
        count += len(document)
        doc_indices.append(count)
    idx = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(sequences), len(doc_indices))
           + struct.pack("<%di" % len(sequences), *[len(s) for s in sequences])
           + struct.pack("<%dq" % len(sequences), *pointers)
           + struct.pack("<%dq" % len(doc_indices), *doc_indices))
    return idx, data


def indexed_dataset_seeds():
    target = "indexed_dataset_fuzz"
    write(target, "int32_two_documents", sections(*indexed_dataset("int32", [[[1, 2, 3], [4]], [[5, 6]]])))
    tokens = indexed_dataset("uint16", [[[10, 20, 30, 40]], [[50, 60]]])
    mask = indexed_dataset("uint8", [[[0, 0, 1, 1]], [[1, 1]]])
    write(target, "uint16_with_loss_mask", sections(*tokens, *mask))
    write(target, "float32_values", sections(*indexed_dataset("float32", [[[1.0, 2.0, 16777216.0]]])))
    write(target, "int64_empty_sequence", sections(*indexed_dataset("int64", [[[], [7, 8]]])))
    write(target, "no_sequences", sections(*indexed_dataset("int16", [])))


# --- JSONL prepare (data/jsonl_prepare.h): option byte, then the lines ---------------------------
def jsonl_seeds():
    target = "jsonl_prepare_fuzz"
    # Option byte: bit 0 skip_bad_lines, bits 1-3 dtype (0 auto, 1 uint8, 4 uint16, 5 int32),
    # bits 4-7 vocab_size index (0 unchecked, 7 -> 256, 11 -> 65536).
    write(target, "plain_ids", bytes([0x00]) + b'{"input_ids": [1, 2, 3]}\n{"input_ids": [4]}\n')
    write(target, "labels_and_loss_mask",
          bytes([0x01 | (5 << 1) | (7 << 4)])
          + b'{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}\n\n'
          + b'{"input_ids": [8, 9], "loss_mask": [0, true]}\n'
          + b'{"input_ids": [300]}\nnot json\n{"text": "hello"}\n')
    write(target, "uint8_bad_line", bytes([1 << 1 | (7 << 4)]) + b'{"input_ids": [255, 0]}\n{"input_ids": [256]}\n')
    write(target, "skip_all_bad", bytes([0x01]) + b'{"input_ids": []}\n[1, 2]\n{"input_ids": [1], "labels": [1], "loss_mask": [1]}\n')


# --- safetensors (models/safetensors.h) ------------------------------------------------------
def safetensors(tensors, metadata=None):
    """Hugging Face layout: u64 header length, JSON header (space-padded to 8), data."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    target = "safetensors_fuzz"
    write(target, "f32_i64_metadata", safetensors(
        [("w", "F32", [2, 3], struct.pack("<6f", *range(6))), ("step", "I64", [], struct.pack("<q", 3))],
        {"format": "pt"}))
    write(target, "bf16_bool_empty", safetensors(
        [("b", "BF16", [2], b"\x80\x3f\x00\x40"), ("mask", "BOOL", [3], b"\x01\x00\x01"),
         ("none", "U8", [0, 4], b"")]))
    write(target, "all_dtypes", safetensors(
        [(dtype, dtype, [1], b"\x01" * size) for dtype, size in
         [("F64", 8), ("F16", 2), ("I32", 4), ("I16", 2), ("I8", 1)]]))


# --- config YAML (configs/config_loader.h) -----------------------------------------------------
MINIMAL_CONFIG = """run:
  name: fuzz
  steps: 2
model:
  vocab_size: 512
  hidden_size: 64
  num_attention_heads: 4
  num_key_value_heads: 2
data:
  path: data/tokens
  batch_tokens: 4096
optim:
  lr: 1.0e-3
  min_lr: 0.0
"""


def config_seeds():
    target = "config_fuzz"
    demo = (pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.yaml").read_text()
    write(target, "demo", demo)
    write(target, "minimal", MINIMAL_CONFIG)
    write(target, "overrides", MINIMAL_CONFIG + "#set chunking.chunk_size=128\n#set run.name=\"a b\"\n"
                                                "#set optim.schedule=linear\n")
    write(target, "quoted_and_flow", 'run: {name: "x\\ty", device: cpu}\nparallel:\n  order: "pp, cp ,dp"\n'
                                     'data: {path: \'p\', batch_sequences: 8}\nlogging: ~\n')


# --- checkpoint manifest (trainer/checkpoint.proto), protobuf encoded by hand -------------------
def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def varint(value):
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, payload):
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def fuzz_shard():
    """The stage-00.safetensors that checkpoint_manifest_fuzz.cpp writes at start with
    models::save_safetensors (compact JSON in insertion order, metadata keys sorted)."""
    return safetensors([("model/weight", "F32", [2, 3], struct.pack("<6f", *range(6))),
                        ("optim/weight/step", "I64", [], struct.pack("<q", 3))],
                       {"pipeline_stage": "0", "step": "3"})


def manifest_payload(shards, config_yaml=MINIMAL_CONFIG, version=1):
    layout = field_varint(1, 1) + field_varint(2, 1) + field_varint(3, len(shards)) + field_varint(4, len(shards))
    out = field_varint(1, version) + field_varint(2, 3) + field_bytes(3, config_yaml) + field_bytes(4, layout)
    for stage, (name, size, crc) in enumerate(shards):
        shard = field_bytes(1, name) + field_varint(2, stage) + field_varint(3, size) + field_varint(4, crc)
        out += field_bytes(5, shard)
    out += field_bytes(6, field_varint(1, 0) + field_varint(2, 12) + field_varint(3, 3))
    out += field_bytes(7, field_bytes(1, "data/tokens") + field_varint(2, 100) + field_varint(3, 5000)
                       + field_varint(4, 0x1234ABCD))
    out += field_bytes(8, "2026-11-29T00:00:00Z") + field_bytes(9, "")
    return out


def frame(payload):
    return b"CFCKPT01" + struct.pack("<I", crc32c(payload)) + payload


def manifest_seeds():
    shard = fuzz_shard()
    good = manifest_payload([("stage-00.safetensors", len(shard), crc32c(shard))])
    wrong_crc = manifest_payload([("stage-00.safetensors", len(shard), 7), ("stage-01.safetensors", 10, 0)])
    for target, transform in [("checkpoint_manifest_payload_fuzz", lambda p: p),
                              ("checkpoint_manifest_fuzz", frame)]:
        write(target, "verified_shard", transform(good))
        write(target, "bad_shard_crc_and_missing_shard", transform(wrong_crc))
        write(target, "other_version_no_shards", transform(manifest_payload([], version=2)))


# --- Hugging Face model directory (models/hugging_face.h): config.json, index, shards -----------
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 8,
              "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "tie_word_embeddings": True, "hidden_act": "silu",
              "rope_scaling": None}


def tiny_llama_tensors(qkv_bias=False):
    """(name, shape) of every tensor of TINY_LLAMA, as models::hf_tensor_shapes lists them."""
    shapes = [("model.embed_tokens.weight", [8, 4])]
    prefix = "model.layers.0."
    for name, shape in [("self_attn.q_proj", [4, 4]), ("self_attn.k_proj", [2, 4]), ("self_attn.v_proj", [2, 4])]:
        shapes.append((prefix + name + ".weight", shape))
        if qkv_bias:
            shapes.append((prefix + name + ".bias", shape[:1]))
    shapes += [(prefix + "self_attn.o_proj.weight", [4, 4]), (prefix + "mlp.gate_proj.weight", [8, 4]),
               (prefix + "mlp.up_proj.weight", [8, 4]), (prefix + "mlp.down_proj.weight", [4, 8]),
               (prefix + "input_layernorm.weight", [4]), (prefix + "post_attention_layernorm.weight", [4]),
               ("model.norm.weight", [4])]
    return shapes


def weights(shapes, dtype="F32"):
    fmt, size = {"F32": ("f", 4), "F16": ("e", 2)}[dtype]
    out = []
    for index, (name, shape) in enumerate(shapes):
        count = 1
        for dim in shape:
            count *= dim
        out.append((name, dtype, shape, struct.pack("<%d%s" % (count, fmt), *[(index + k) / 16 for k in range(count)])))
    return out


def hf_model_seeds():
    target = "hf_model_fuzz"
    config = json.dumps(TINY_LLAMA).encode()
    single = safetensors(weights(tiny_llama_tensors()), {"format": "pt"})
    write(target, "llama_single_file", sections(config, b"", single, b""))
    # Sharded: half of the tensors in model.safetensors, the rest in model-00001-of-00001, as the index says.
    shapes = tiny_llama_tensors()
    first, second = shapes[: len(shapes) // 2], shapes[len(shapes) // 2:]
    index = {"metadata": {"total_size": 0},
             "weight_map": {**{name: "model.safetensors" for name, _ in first},
                            **{name: "model-00001-of-00001.safetensors" for name, _ in second}}}
    write(target, "llama_sharded_index", sections(config, json.dumps(index).encode(),
                                                 safetensors(weights(first, "F16")), safetensors(weights(second))))
    qwen = dict(TINY_LLAMA, architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
    write(target, "qwen2_biases", sections(json.dumps(qwen).encode(), b"",
                                           safetensors(weights(tiny_llama_tensors(qkv_bias=True))), b""))
    untied = dict(TINY_LLAMA, tie_word_embeddings=False, head_dim=4, rope_scaling={"type": "linear", "factor": 2.0})
    write(target, "untied_head_dim_rope_scaling", sections(json.dumps(untied).encode(), b"", single, b""))


if __name__ == "__main__":
    indexed_dataset_seeds()
    jsonl_seeds()
    safetensors_seeds()
    config_seeds()
    manifest_seeds()
    hf_model_seeds()
