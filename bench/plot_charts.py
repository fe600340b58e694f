#!/usr/bin/env python3
"""Draws docs/performance.md's charts as standalone SVG from the benchmarks' raw output.

  bench/plot_charts.py baselines runs/bench-baselines/baselines.json docs/images/baselines.svg
  bench/plot_charts.py memory runs/bench-memory/memory_scaling.jsonl docs/images/memory_scaling.svg

Standard library only, so it runs with any python3.
"""
import json
import sys
from xml.sax.saxutils import escape

COLORS = {"pad_to_longest": "#bbbbbb", "pack_to_max": "#ee7733"}
CHUNKFLOW_COLORS = ["#0077bb", "#33bbee", "#009988", "#66ccaa"]


def color_of(strategy, seen):
    if strategy in COLORS:
        return COLORS[strategy]
    if strategy not in seen:
        seen[strategy] = CHUNKFLOW_COLORS[len(seen) % len(CHUNKFLOW_COLORS)]
    return seen[strategy]


def baselines_svg(results):
    panels = list(dict.fromkeys((r["dataset"], r["layout"]) for r in results))
    strategies = list(dict.fromkeys(r["strategy"] for r in results))
    bar, gap, label_w, plot_w, panel_gap = 16, 4, 170, 360, 36
    panel_h = len(strategies) * (bar + gap) + 28
    width = label_w + plot_w + 90
    height = 40 + len(panels) * (panel_h + panel_gap)
    seen = {}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">Training throughput, tokens/s '
           '(same model, data, batches)</text>']
    y = 44
    for dataset, layout in panels:
        rows = [r for r in results if r["dataset"] == dataset and r["layout"] == layout]
        top = max(r["tokens_per_second"] for r in rows)
        base = next((r["tokens_per_second"] for r in rows if r["strategy"] == "pad_to_longest"), None)
        out.append(f'<text x="10" y="{y + 12}" font-weight="bold">{escape(dataset)} dataset, {escape(layout)}</text>')
        y += 20
        for r in rows:
            w = plot_w * r["tokens_per_second"] / top
            out.append(f'<text x="{label_w - 6}" y="{y + bar - 4}" text-anchor="end">{escape(r["strategy"])}</text>')
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" '
                       f'fill="{color_of(r["strategy"], seen)}"/>')
            ratio = f' ({r["tokens_per_second"] / base:.2f}x)' if base else ""
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4}">{r["tokens_per_second"]:.0f}{ratio}</text>')
            y += bar + gap
        y += panel_gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def memory_svg(rows):
    def series_of(row):
        if row.get("recompute_layers"):
            return "pack-to-max + full recompute"
        return "no chunking (pack-to-max)" if row["chunk_size"] == row["length"] else f"ChunkFlow (chunk {row['chunk_size']})"

    series = {}
    for row in rows:
        series.setdefault(series_of(row), []).append((row["length"], row["step_peak_above_baseline_bytes"] / 2**20))
    lengths = sorted({row["length"] for row in rows})
    top = max(mib for points in series.values() for _, mib in points)
    left, right, top_pad, bottom_pad, plot_w, plot_h = 70, 230, 40, 50, 420, 260
    width, height = left + plot_w + right, top_pad + plot_h + bottom_pad
    x_of = {length: left + plot_w * (i + 0.5) / len(lengths) for i, length in enumerate(lengths)}
    y_of = lambda mib: top_pad + plot_h * (1 - mib / (top * 1.08))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="22" font-size="15" font-weight="bold">Step peak memory vs sequence length</text>',
           f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="black"/>',
           f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="black"/>']
    for length in lengths:
        out.append(f'<text x="{x_of[length]:.1f}" y="{top_pad + plot_h + 18}" text-anchor="middle">{length // 1024}K</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">tokens in the sequence</text>')
    for tick in range(5):
        mib = top * 1.08 * tick / 4
        out.append(f'<text x="{left - 6}" y="{y_of(mib) + 4:.1f}" text-anchor="end">{mib:.0f}</text>')
    out.append(f'<text x="14" y="{top_pad + plot_h / 2}" transform="rotate(-90 14 {top_pad + plot_h / 2})" '
               'text-anchor="middle">MiB</text>')
    palette = ["#0077bb", "#cc3311", "#ee7733", "#009988"]
    for index, (name, points) in enumerate(series.items()):
        points.sort()
        color = palette[index % len(palette)]
        path = " ".join(f"{x_of[length]:.1f},{y_of(mib):.1f}" for length, mib in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for length, mib in points:
            out.append(f'<circle cx="{x_of[length]:.1f}" cy="{y_of(mib):.1f}" r="3" fill="{color}">'
                       f'<title>{escape(name)}, {length} tokens: {mib:.1f} MiB</title></circle>')
        legend_y = top_pad + 10 + 20 * index
        out.append(f'<rect x="{left + plot_w + 14}" y="{legend_y - 9}" width="14" height="4" fill="{color}"/>')
        out.append(f'<text x="{left + plot_w + 34}" y="{legend_y - 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) != 4 or argv[1] not in ("baselines", "memory"):
        sys.exit(__doc__)
    kind, source, target = argv[1:]
    if kind == "baselines":
        svg = baselines_svg(json.load(open(source)))
    else:
        svg = memory_svg([json.loads(line) for line in open(source) if line.strip()])
    with open(target, "w") as handle:
        handle.write(svg)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv)
