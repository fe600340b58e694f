#!/usr/bin/env python3
"""Draws docs/images/architecture.svg: the data flow of one optimizer step (left) and the
library layers (right). Run from the repository root: python3 scripts/draw_architecture_svg.py"""

FLOW = [
    ("dataset .bin/.idx + loss mask", "data/indexed_dataset.h"),
    ("global batch (sampler)", "data/sampler.h"),
    ("chunk plan: pack + split (Alg. 1)", "data/chunk_plan.h"),
    ("DP balance: chunk groups per rank", "parallel/data_parallel.h"),
    ("CP shard: 2 pieces per rank", "parallel/context_parallel.h"),
    ("1F1B pipeline schedule", "parallel/pipeline_schedule.h"),
    ("state-aware scheduler (Alg. 2)", "trainer/chunk_scheduler.h"),
    ("model on a chunk + K/V state", "models/transformer.h"),
    ("kernels: attention, CE, fused ops", "kernels/*.h"),
    ("gradient all-reduce, clip, AdamW", "trainer/trainer.h"),
    ("metrics, TensorBoard, trace, checkpoint", "trainer/checkpoint.h"),
]
LAYERS = [
    ("tools", "chunkflow-data, -pipeline, -export"),
    ("trainer", "loop, scheduler, checkpoints"),
    ("parallel", "MPI, mesh, DP/CP/PP"),
    ("models", "decoder, safetensors, HF"),
    ("data | kernels", "datasets, plans | CPU + CUDA ops"),
    ("configs", "YAML sections"),
    ("core", "errors, files, logging"),
]


def draw():
    width, height = 900, 40 + 52 * len(FLOW)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        '<defs><marker id="arrow" markerWidth="10" markerHeight="8" refX="9" refY="4" orient="auto">'
        '<path d="M0,0 L10,4 L0,8 z" fill="#555"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="20" y="24" font-size="15" font-weight="bold">One optimizer step, on every rank</text>',
        '<text x="560" y="24" font-size="15" font-weight="bold">Libraries, one per folder (arrow: uses)</text>',
    ]
    for index, (title, where) in enumerate(FLOW):
        y = 40 + 52 * index
        color = "#e8f0fe" if index < 6 else "#fde8e8" if index < 9 else "#e6f4ea"
        out.append(f'<rect x="20" y="{y}" width="500" height="38" rx="6" fill="{color}" stroke="#8a8a8a"/>')
        out.append(f'<text x="32" y="{y + 24}" font-size="14">{title}</text>')
        out.append(f'<text x="508" y="{y + 24}" font-size="12" fill="#555" text-anchor="end" '
                   f'font-family="monospace">{where}</text>')
        if index + 1 < len(FLOW):
            out.append(f'<line x1="270" y1="{y + 38}" x2="270" y2="{y + 51}" stroke="#555" stroke-width="1.5" '
                       'marker-end="url(#arrow)"/>')
    layer_height = (height - 60) / len(LAYERS)
    for index, (name, what) in enumerate(LAYERS):
        y = 40 + layer_height * index
        box = layer_height - 14
        out.append(f'<rect x="560" y="{y:.0f}" width="320" height="{box:.0f}" rx="6" fill="#f3f3f3" stroke="#8a8a8a"/>')
        out.append(f'<text x="720" y="{y + box / 2 - 2:.0f}" font-size="15" font-weight="bold" '
                   f'text-anchor="middle">{name}</text>')
        out.append(f'<text x="720" y="{y + box / 2 + 16:.0f}" font-size="12" fill="#555" '
                   f'text-anchor="middle">{what}</text>')
        if index + 1 < len(LAYERS):
            out.append(f'<line x1="720" y1="{y + box:.0f}" x2="720" y2="{y + layer_height - 1:.0f}" stroke="#555" '
                       'stroke-width="1.5" marker-end="url(#arrow)"/>')
    out.append('</svg>')
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open("docs/images/architecture.svg", "w") as svg:
        svg.write(draw())
