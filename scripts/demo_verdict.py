#!/usr/bin/env python3
"""The demo's last words: what its training run showed, in plain terms.

Reads <run folder>/summary.json (written by chunkflow-train at the end of a run) and says how far
the loss on far tokens fell. Exits 1 when it fell by less than half: then the demo did not show
what it is for, and tests/tools/demo_test.sh fails.

    scripts/demo_verdict.py runs/demo [--chunk-size 64] [--vocab-size 512]
"""
import argparse
import json
import math
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder")
    parser.add_argument("--chunk-size", type=int, default=64, help="the run's chunking.chunk_size (for the text)")
    parser.add_argument("--vocab-size", type=int, default=512, help="the run's model.vocab_size (for the text)")
    parser.add_argument("--min-drop", type=float, default=0.5, help="least relative fall of the far-token loss")
    args = parser.parse_args()
    path = f"{args.run_folder}/summary.json"
    try:
        with open(path) as file:
            summary = json.load(file)
        start, end = summary["far_loss_start"], summary["far_loss_end"]
        near_start, near_end = summary["near_loss_start"], summary["near_loss_end"]
    except (OSError, ValueError, KeyError) as error:
        print(f"demo_verdict: cannot read the run summary {path}: {error}", file=sys.stderr)
        return 2
    if start is None or end is None or not math.isfinite(start) or start <= 0:
        print(f"demo_verdict: {path} has no far-token loss (no sequence was longer than one chunk)", file=sys.stderr)
        return 1
    drop = 1 - end / start
    chart = f"{args.run_folder}/loss.svg"
    print(f"Far tokens are the targets beyond the first {args.chunk_size}-token chunk of a long sequence. In this")
    print("data they repeat tokens from earlier chunks, so a model can only predict them by attending to")
    print("those chunks' keys and values, which ChunkFlow carries from chunk to chunk in its K/V state.")
    print(f"Their loss fell from {start:.2f} to {end:.2f} nats per token ({100 * drop:.0f}% lower); the near tokens'")
    print(f"from {near_start:.2f} to {near_end:.2f} (the first chunk's random tokens cannot be learned: a uniform")
    print(f"guess among {args.vocab_size} tokens costs {math.log(args.vocab_size):.2f}).")
    print(f"Loss curves (near vs far tokens): {chart}")
    if drop < args.min_drop:
        print(f"demo_verdict: the far-token loss fell by {100 * drop:.0f}%, less than the {100 * args.min_drop:.0f}% "
              "this demo is meant to show", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
