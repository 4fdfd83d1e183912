"""Draw the seconds per image of ``bench/family_levers.py`` results as one SVG bar chart.

    python bench/plot_levers.py docs/assets/flux-h100.svg --family flux-dev \\
        bench/results/2026-12-07-h100-flux-runner.json bench/results/2026-12-07-h100-flux-attention.json \\
        bench/results/2026-12-07-h100-flux-lossy.json --title "FLUX.1-dev, 1024x1024, 28 steps, one H100" --line 3.5

Every record with ``s_per_image`` (of ``--family``, when given) becomes a bar, in file order;
``--exclude TEXT`` leaves out the bars whose label contains it (one slow setting would squash
the scale); ``--line`` draws a target.
No plotting library: the SVG is written by hand, so the chart needs nothing installed.
"""

from __future__ import annotations

import argparse
import json
from html import escape
from pathlib import Path
from typing import Any


def label(record: dict[str, Any]) -> str:
    mode = record["mode"]
    what = {"runner": "gridgen runner", "diffusers": "plain diffusers", "bare": "bare pipeline"}[mode]
    if mode == "runner":
        setup = json.loads(record.get("setup") or "{}")
        what += ", " + ", ".join(f"{k}={v}" for k, v in setup.items() if k in ("optimize", "quantize", "step_cache", "cpu_offload"))
    elif record.get("lever") not in (None, "eager"):
        extra = [part for part in record["lever"].split("+") if part != "compile"]
        what += ", compiled" + "".join(f" + {part}" for part in extra)
    else:
        what += ", eager"
    images = record.get("images_per_request", 1)
    what += f", {images} image" + ("s" if images > 1 else "")
    if record.get("previews"):
        what += f", previews every {record['previews']}" + (" (TAESD)" if record.get("preview") == "taesd" else "")
    return what


def svg(bars: list[tuple[str, float]], title: str, line: float | None) -> str:
    left, width, row, top = 390, 380, 30, 40
    scale = width / max([v for _, v in bars] + [line or 0])
    height = top + row * len(bars) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<text x="10" y="22" font-size="14">{escape(title)}: seconds per image</text>']
    for i, (name, value) in enumerate(bars):
        y = top + i * row
        parts.append(f'<text x="10" y="{y + 15}">{escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{value * scale:.0f}" height="18" fill="#4c78a8"/>')
        parts.append(f'<text x="{left + value * scale + 6:.0f}" y="{y + 15}">{value:.2f} s</text>')
    if line is not None:
        x = left + line * scale
        parts.append(f'<line x1="{x:.0f}" y1="{top - 4}" x2="{x:.0f}" y2="{height - 24}" stroke="#e45756" '
                     'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x + 4:.0f}" y="{height - 10}" fill="#e45756">target {line} s</text>')
    return "\n".join([*parts, "</svg>", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("results", nargs="+")
    parser.add_argument("--title", default="")
    parser.add_argument("--line", type=float, default=None)
    parser.add_argument("--family", default=None, help="only this family's records, e.g. flux-dev")
    parser.add_argument("--exclude", action="append", default=[], help="leave out bars whose label contains this")
    args = parser.parse_args()
    bars = [(label(r), float(r["s_per_image"])) for path in args.results
            for r in json.loads(Path(path).read_text())["results"]
            if "s_per_image" in r and args.family in (None, r.get("family"))]
    bars = [(name, value) for name, value in bars if not any(text in name for text in args.exclude)]
    Path(args.out).write_text(svg(bars, args.title, args.line))
    print(f"{args.out}: {len(bars)} bars")


if __name__ == "__main__":
    main()
