#!/usr/bin/env python3
"""The outside peer: trains the model of a ChunkFlow run config with Hugging Face transformers.

Reads our Megatron .bin/.idx dataset (and its _loss_mask companion) with numpy, builds
LlamaForCausalLM (model.family llama) or Qwen2ForCausalLM (model.family qwen2, whose q/k/v
projections always carry biases) with attn_implementation="sdpa" from the config's `model`
section, forms global batches of `data.batch_tokens` tokens (or `data.batch_sequences` sequences)
the way our sampler does, and trains with AdamW, our learning-rate schedule and gradient clipping.
Prints one JSON line: tokens/s over steps 2..N (real tokens, padding excluded), step time, tokens per
CPU-second (process CPU time, all threads: the work measure that survives a shared machine), peak RSS,
and on CUDA the peak GPU memory (torch.cuda.max_memory_allocated over the whole run).

Device: --device cpu|cuda|auto, default the config's run.device; auto is cuda when
torch.cuda.is_available(). The model is built (and randomly initialised, after
torch.manual_seed(run.seed)) directly on that device; inputs and AdamW state live there too. On
CUDA each step is timed between torch.cuda.synchronize() calls. A CUDA out-of-memory error prints
{"oom": true, "error": <its first line>, ...} instead of a traceback and exits with status 3.

Precision (model.dtype):
  float32   everything in float32.
  bfloat16  PyTorch automatic mixed precision, the recipe of a plain transformers training loop
            (and of Trainer with bf16=True): the parameters stay float32 (the master weights; the
            model is never cast), the forward runs inside
            torch.autocast(device_type, dtype=torch.bfloat16), which runs matmuls and attention
            (linear layers, sdpa) in bf16 on per-forward bf16 copies of the weights and keeps the ops
            on its float32 list (softmax, reductions, ...) in float32; transformers' RMSNorm computes
            in float32 itself, and its loss upcasts the bf16 logits to float32 before the cross
            entropy (summed, divided by the step's loss-token count, as in float32). Backward runs
            outside autocast; gradients arrive in the float32 .grad of the float32 parameters and
            accumulate there across micro-batches; clipping and AdamW (state included) are float32.
            No loss scaling (bf16 has float32's exponent range). ChunkFlow's bfloat16
            (configs/README.md: Megatron --bf16, bf16 weights and activations for compute, float32
            master weights, gradients and AdamW state) is the same idea built another way, so memory
            and speed differences include the recipes', not only the frameworks'. On the CPU autocast
            uses CPU bf16 kernels: slow, for tests.
--gradient-checkpointing: transformers' model.gradient_checkpointing_enable (non-reentrant
torch.utils.checkpoint per decoder layer), use_cache=False as always.

Modes (one process each, so ru_maxrss is the mode's own peak):
  padded  micro-batches of --micro-batch-sequences sequences, right-padded to the longest, with
          an attention_mask; gradients accumulate over the global batch
  packed  the whole global batch as one row, position_ids restarting at 0 per sequence and no
          attention_mask: transformers' padding-free path, which turns the position_ids into a
          per-sequence (block-diagonal causal) mask for sdpa. It needs use_cache=False: with the
          config default (True) transformers 4.57 silently attends across sequences.
  check   both on the first global batch, forward only, from the same initial weights; exits 1
          when their losses differ by more than --tolerance (relative) or their logits by more
          than --logit-tolerance. Also reports the packed loss with use_cache=True, which leaks.

Both modes divide the summed token loss by the global batch's loss-token count (transformers'
num_items_in_batch), which is ChunkFlow's loss, so equal weights give equal losses.

  bench/hf_peer.py --config configs/small_llama.yaml --data runs/bench/data/longtail --mode packed --steps 20
  bench/hf_peer.py --config run.yaml --mode padded --device cuda --set model.dtype=bfloat16 --gradient-checkpointing
"""

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time

import numpy as np

# dtype codes of the Megatron version-1 index (data/indexed_dataset.h)
_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
           8: np.uint16}
_MAGIC = b"MMIDIDX\x00\x00"

# configs/README.md defaults for the keys this script reads
_MODEL_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, head_dim=0, rms_norm_eps=1e-6,
                       rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
                       attention_bias=False, initializer_range=0.02, family="llama", dtype="float32",
                       init_from="")
_OPTIM_DEFAULTS = dict(lr=3e-4, min_lr=3e-5, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
                       warmup_steps=10, schedule="cosine", max_grad_norm=1.0, grad_accumulation=1)
_DATA_DEFAULTS = dict(path="", loss_mask_path="", batch_sequences=0, batch_tokens=65536, shuffle=True)


class IndexedDataset:
    """A Megatron version-1 dataset prefix: sequence i is tokens[pointers[i] : + lengths[i]]."""

    def __init__(self, prefix):
        with open(prefix + ".idx", "rb") as index:
            header = index.read(9 + 8 + 1 + 8 + 8)
        if len(header) < 34 or header[:9] != _MAGIC:
            raise SystemExit(f"{prefix}.idx: not a Megatron indexed dataset (magic {header[:9]!r})")
        version = int.from_bytes(header[9:17], "little")
        if version != 1:
            raise SystemExit(f"{prefix}.idx: version {version}, only 1 is supported")
        code = header[17]
        if code not in _DTYPES:
            raise SystemExit(f"{prefix}.idx: unknown dtype code {code}")
        self.dtype = np.dtype(_DTYPES[code])
        count = int.from_bytes(header[18:26], "little")
        self.lengths = np.fromfile(prefix + ".idx", dtype=np.int32, count=count, offset=34).astype(np.int64)
        self.pointers = np.fromfile(prefix + ".idx", dtype=np.int64, count=count, offset=34 + 4 * count)
        self.tokens = np.memmap(prefix + ".bin", dtype=self.dtype, mode="r")
        if len(self.lengths) != count or self.lengths.sum() * self.dtype.itemsize != self.tokens.nbytes:
            raise SystemExit(f"{prefix}: index and .bin sizes disagree (truncated files?)")

    def __len__(self):
        return len(self.lengths)

    def read(self, i):
        start = int(self.pointers[i]) // self.dtype.itemsize
        return np.asarray(self.tokens[start:start + int(self.lengths[i])], dtype=np.int64)


def load_config(path):
    try:
        import yaml
    except ImportError:
        raise SystemExit("PyYAML is not installed in this Python; pip install pyyaml") from None
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    sections = {}
    for name, defaults in (("model", _MODEL_DEFAULTS), ("optim", _OPTIM_DEFAULTS), ("data", _DATA_DEFAULTS)):
        section = dict(defaults)
        section.update({k: v for k, v in (raw.get(name) or {}).items() if k in defaults})
        sections[name] = section
    run = raw.get("run") or {}
    sections["seed"] = run.get("seed", 1234)
    sections["device"] = run.get("device", "auto")
    return sections


def apply_overrides(config, overrides):
    """--set section.key=value, typed like the default."""
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("model", "optim", "data") or name not in config[section]:
            raise SystemExit(f"--set {item}: unknown key (hf_peer.py reads model.*, optim.*, data.*)")
        default = config[section][name]
        if isinstance(default, bool):
            config[section][name] = value == "true"
        elif isinstance(default, int):
            config[section][name] = int(value)
        elif isinstance(default, float):
            config[section][name] = float(value)
        else:
            config[section][name] = value


def global_batches(lengths, data, seed):
    """Global batches as our sampler forms them: a seeded shuffle (numpy's, not our xoshiro one),
    then as many sequences as fit in batch_tokens (a longer one alone), or batch_sequences each."""
    order = np.random.default_rng(seed).permutation(len(lengths)) if data["shuffle"] else np.arange(len(lengths))
    while True:
        batch, tokens = [], 0
        for i in order:
            i = int(i)
            if data["batch_sequences"] > 0:
                batch.append(i)
                if len(batch) == data["batch_sequences"]:
                    yield batch
                    batch = []
                continue
            if batch and tokens + lengths[i] > data["batch_tokens"]:
                yield batch
                batch, tokens = [], 0
            batch.append(i)
            tokens += int(lengths[i])
        if batch:
            yield batch


def learning_rate(optim, step, total_steps):
    """trainer/lr_schedule.cpp, step counted from 0."""
    if step < optim["warmup_steps"]:
        return optim["lr"] * (step + 1) / (optim["warmup_steps"] + 1)
    if optim["schedule"] == "constant":
        return optim["lr"]
    decay_steps = max(1, total_steps - 1 - optim["warmup_steps"])
    progress = min(1.0, max(0.0, (step - optim["warmup_steps"]) / decay_steps))
    factor = 1.0 - progress if optim["schedule"] == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim["min_lr"] + (optim["lr"] - optim["min_lr"]) * factor


def validate_model(model_config):
    """The model keys this peer can honour; messages name the key and value as chunkflow-train's do."""
    if model_config["family"] not in ("llama", "qwen2"):
        raise SystemExit(f"model.family must be llama or qwen2, got {model_config['family']!r}")
    if model_config["dtype"] not in ("float32", "bfloat16"):
        raise SystemExit(f"model.dtype must be float32 or bfloat16, got {model_config['dtype']!r}")
    if model_config["init_from"]:
        # a benchmark peer only needs the architecture; loading a checkpoint would add a second
        # way to build the model that nothing here tests
        raise SystemExit(f"model.init_from {model_config['init_from']!r}: hf_peer.py trains from a random init "
                         "only; set model.init_from=\"\"")
    if model_config["family"] == "qwen2" and not model_config["attention_bias"]:
        # transformers' Qwen2Attention hard-codes bias=True on q/k/v; training it would silently be a
        # different model from the config's
        raise SystemExit("model.attention_bias is false, but transformers' Qwen2 (model.family qwen2) always "
                         "has q/k/v biases; set model.attention_bias=true (chunkflow-train requires it too)")


def build_model(model_config, seed, device):
    """The config's model in float32 on `device`, randomly initialised after torch.manual_seed(seed)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    validate_model(model_config)
    head_dim = model_config["head_dim"] or model_config["hidden_size"] // model_config["num_attention_heads"]
    common = dict(
        vocab_size=model_config["vocab_size"], hidden_size=model_config["hidden_size"],
        intermediate_size=model_config["intermediate_size"], num_hidden_layers=model_config["num_hidden_layers"],
        num_attention_heads=model_config["num_attention_heads"],
        num_key_value_heads=model_config["num_key_value_heads"], head_dim=head_dim,
        rms_norm_eps=model_config["rms_norm_eps"], rope_theta=model_config["rope_theta"],
        max_position_embeddings=model_config["max_position_embeddings"],
        tie_word_embeddings=model_config["tie_word_embeddings"],
        initializer_range=model_config["initializer_range"], hidden_act="silu",
        # With use_cache (the configs' default) the model makes a DynamicCache even in training,
        # and transformers 4.57 then skips the packed-sequence detection: a packed row would
        # attend across sequences. `check` measures that too.
        use_cache=False)
    if model_config["family"] == "qwen2":
        # Qwen2Config has no head_dim argument, but Qwen2Attention and its RoPE read config.head_dim
        # when present (kwargs become attributes). No sliding window: ChunkFlow attends over the
        # whole sequence.
        config, model_class = Qwen2Config(**common, use_sliding_window=False), Qwen2ForCausalLM
    else:
        config = LlamaConfig(**common, attention_bias=model_config["attention_bias"], mlp_bias=False)
        model_class = LlamaForCausalLM
    torch.manual_seed(seed)  # seeds the CUDA generators too
    # Built and initialised on the device itself: a float32 init of a billion-parameter model on
    # one CPU thread, then a host-to-device copy, would cost minutes of GPU time per run. (CPU and
    # CUDA runs of one seed so start from different weights; ChunkFlow's init differs from both.)
    with torch.device(device):
        model = model_class._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


def resolve_device(parser, args, config):
    """--device, else run.device; auto is cuda when torch sees a usable GPU."""
    import torch

    requested = args.device or config["device"]
    source = f"--device {requested}" if args.device else f"run.device {requested!r} ({args.config})"
    if requested not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"{source}: must be auto, cpu or cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        message = (f"{source}: no usable GPU (torch.cuda.is_available() is False; torch {torch.__version__}, "
                   f"built for CUDA {torch.version.cuda})")
        if args.device:
            parser.error(message)
        raise SystemExit(message)
    return torch.device(requested)


def autocast(device, model_config):
    """The forward's precision context: bf16 autocast for model.dtype bfloat16 (see the module doc)."""
    import torch

    if model_config["dtype"] == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model, optim):
    """AdamW with decay on matrices other than norms (trainer/trainer.cpp's takes_weight_decay)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "norm" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=optim["lr"], betas=(optim["beta1"], optim["beta2"]), eps=optim["eps"])


class Batch:
    """One global batch: token ids and labels (-100 = no loss) per sequence."""

    def __init__(self, dataset, mask_dataset, indices):
        self.sequences, self.labels = [], []
        for i in indices:
            tokens = dataset.read(i)
            labels = tokens.copy()
            if mask_dataset is not None:
                labels[mask_dataset.read(i) == 0] = -100
            labels[0] = -100  # never a target: nothing precedes it (and in a packed row, no cross-sequence target)
            self.sequences.append(tokens)
            self.labels.append(labels)
        self.tokens = int(sum(len(s) for s in self.sequences))
        # transformers predicts labels[t] from position t - 1
        self.loss_tokens = int(sum((l[1:] != -100).sum() for l in self.labels))


def padded_inputs(batch, micro_batch_sequences):
    import torch

    for start in range(0, len(batch.sequences), micro_batch_sequences):
        sequences = batch.sequences[start:start + micro_batch_sequences]
        labels = batch.labels[start:start + micro_batch_sequences]
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        target = torch.full((len(sequences), width), -100, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, (s, l) in enumerate(zip(sequences, labels)):
            ids[row, :len(s)] = torch.from_numpy(s)
            target[row, :len(s)] = torch.from_numpy(l)
            mask[row, :len(s)] = 1
        yield dict(input_ids=ids, labels=target, attention_mask=mask)


def packed_inputs(batch):
    import torch

    ids = torch.from_numpy(np.concatenate(batch.sequences))[None]
    target = torch.from_numpy(np.concatenate(batch.labels))[None]
    positions = torch.from_numpy(np.concatenate([np.arange(len(s)) for s in batch.sequences]))[None]
    yield dict(input_ids=ids, labels=target, position_ids=positions)


def micro_batches(mode, batch, micro_batch_sequences):
    return padded_inputs(batch, micro_batch_sequences) if mode == "padded" else packed_inputs(batch)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def synchronize(device):
    """Waits for the device's queued work, so wall-clock times cover it (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_bytes(device, peak=False):
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)


def run_fields(args, config, device):
    """What was run, in every JSON line (results and out-of-memory reports alike)."""
    return dict(family=config["model"]["family"], dtype=config["model"]["dtype"], device=device.type,
                gradient_checkpointing=args.gradient_checkpointing)


def train(args, config, dataset, mask_dataset, device, progress):
    """Trains args.steps steps; progress["step"] names the step under way (0: building the model)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    progress["step"] = 0
    model = build_model(config["model"], config["seed"], device)
    model.train()
    if args.gradient_checkpointing:
        # non-reentrant: the implementation PyTorch recommends, which needs no input that requires grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = make_optimizer(model, config["optim"])
    batches = global_batches(dataset.lengths, config["data"], config["seed"])
    rss_before = peak_rss_bytes()
    gpu_before = gpu_bytes(device)
    rows = []
    for step in range(args.steps):
        progress["step"] = step + 1
        batch = Batch(dataset, mask_dataset, next(batches))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config["optim"], step, args.steps)
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        # summed on the device in float64 (as the Python float sum was): reading each micro-batch's
        # loss back would stall the GPU queue once per micro-batch
        loss_sum, padded_tokens = torch.zeros((), dtype=torch.float64, device=device), 0
        for inputs in micro_batches(args.mode, batch, args.micro_batch_sequences):
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            padded_tokens += inputs["input_ids"].numel()
            with autocast(device, config["model"]):
                loss = model(**inputs, num_items_in_batch=batch.loss_tokens).loss
            loss.backward()
            loss_sum += loss.detach().double()
        if config["optim"]["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["optim"]["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        rows.append(dict(step=step + 1, loss=float(loss_sum), tokens=batch.tokens, padded_tokens=padded_tokens,
                         sequences=len(batch.sequences), seconds=seconds, cpu_seconds=cpu_seconds))
        if args.verbose:
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    timed = rows[1:] or rows
    seconds = sum(r["seconds"] for r in timed)
    cpu_seconds = sum(r["cpu_seconds"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    return dict(system="transformers", mode=args.mode, steps=args.steps, threads=torch.get_num_threads(),
                tokens_per_second=tokens / seconds, step_seconds=seconds / len(timed),
                tokens_per_cpu_second=tokens / cpu_seconds, step_cpu_seconds=cpu_seconds / len(timed),
                padding_share=1.0 - tokens / sum(r["padded_tokens"] for r in timed),
                first_loss=rows[0]["loss"], final_loss=rows[-1]["loss"], peak_rss_bytes=peak_rss_bytes(),
                rss_before_training_bytes=rss_before,
                micro_batch_sequences=args.micro_batch_sequences if args.mode == "padded" else None,
                peak_gpu_bytes=gpu_bytes(device, peak=True), gpu_bytes_before_training=gpu_before,
                **run_fields(args, config, device),
                transformers=__import__("transformers").__version__, torch=torch.__version__)


def check(args, config, dataset, mask_dataset, device):
    """Loss of the first global batch, padded and packed, from the same weights."""
    import torch

    model = build_model(config["model"], config["seed"], device)
    model.eval()
    batch = Batch(dataset, mask_dataset, next(global_batches(dataset.lengths, config["data"], config["seed"])))
    losses, logits = {}, {}

    def run(mode, **extra):
        loss, rows = 0.0, []
        for inputs in micro_batches(mode, batch, args.micro_batch_sequences):
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            with autocast(device, config["model"]):
                output = model(**inputs, num_items_in_batch=batch.loss_tokens, **extra)
            loss += float(output.loss)
            # logits of real tokens only, in sequence order: [tokens, vocab]
            mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
            rows.extend(output.logits[r][mask[r]] for r in range(output.logits.shape[0]))
        return loss, torch.cat(rows)

    with torch.no_grad():
        for mode in ("padded", "packed"):
            losses[mode], logits[mode] = run(mode)
        leaky_loss, leaky_logits = run("packed", use_cache=True)
    difference = abs(losses["padded"] - losses["packed"]) / abs(losses["padded"])
    logit_difference = float((logits["padded"] - logits["packed"]).abs().max())
    agree = difference <= args.tolerance and logit_difference <= args.logit_tolerance
    print(json.dumps(dict(system="transformers", mode="check", sequences=len(batch.sequences), tokens=batch.tokens,
                          padded_loss=losses["padded"], packed_loss=losses["packed"], relative_difference=difference,
                          max_logit_difference=logit_difference, tolerance=args.tolerance,
                          logit_tolerance=args.logit_tolerance, agree=agree,
                          packed_loss_with_use_cache=leaky_loss,
                          max_logit_difference_with_use_cache=float((logits["padded"] - leaky_logits).abs().max()),
                          **run_fields(args, config, device))))
    return agree


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ChunkFlow run YAML (model, data, optim sections)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, as chunkflow-train --set")
    parser.add_argument("--data", help="dataset prefix (default: data.path of the config)")
    parser.add_argument("--mode", choices=["padded", "packed", "check"], required=True)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (timing uses steps 2..N)")
    parser.add_argument("--micro-batch-sequences", type=int, default=8, help="padded mode: sequences per micro-batch")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="check mode: relative loss difference allowed")
    parser.add_argument("--logit-tolerance", type=float, default=1e-4,
                        help="check mode: largest absolute logit difference allowed")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"],
                        help="where to train (default: run.device of the config; auto = cuda when available)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute each decoder layer in backward (transformers' gradient_checkpointing_enable)")
    parser.add_argument("--verbose", action="store_true", help="one JSON line per step on stderr")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.micro_batch_sequences < 1:
        parser.error(f"--micro-batch-sequences must be >= 1, got {args.micro_batch_sequences}")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = load_config(args.config)
    apply_overrides(config, args.set)
    if config["optim"]["grad_accumulation"] != 1:
        raise SystemExit("hf_peer.py: optim.grad_accumulation must be 1")
    validate_model(config["model"])  # before the dataset is read: a config error is the first thing to report
    device = resolve_device(parser, args, config)
    prefix = args.data or config["data"]["path"]
    dataset = IndexedDataset(prefix)
    # As chunkflow-train resolves data.loss_mask_path: "" = the mask beside the dataset if any, "none" = no mask.
    configured = config["data"]["loss_mask_path"]
    mask_prefix = "" if configured == "none" else configured or (prefix + "_loss_mask" if os.path.exists(prefix + "_loss_mask.idx") else "")
    mask_dataset = IndexedDataset(mask_prefix) if mask_prefix else None
    if mask_dataset is not None and not np.array_equal(mask_dataset.lengths, dataset.lengths):
        raise SystemExit(f"{mask_prefix}: loss-mask lengths differ from {prefix}'s")
    progress = dict(step=None)
    try:
        if args.mode == "check":
            sys.exit(0 if check(args, config, dataset, mask_dataset, device) else 1)
        print(json.dumps(train(args, config, dataset, mask_dataset, device, progress)))
    except torch.OutOfMemoryError as error:
        # A shape that does not fit is a result of the benchmark, not a crash: one JSON line it can
        # record, and an exit status (3) that tells it from other failures (1).
        lines = str(error).strip().splitlines()
        print(json.dumps(dict(system="transformers", mode=args.mode, oom=True,
                              error=lines[0] if lines else type(error).__name__, step=progress["step"],
                              steps=args.steps, peak_gpu_bytes=gpu_bytes(device, peak=True),
                              micro_batch_sequences=args.micro_batch_sequences if args.mode == "padded" else None,
                              **run_fields(args, config, device))), flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
