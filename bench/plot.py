"""Draw a results JSON from sdxl_bench.py as two bar charts: s/image and img/s per GPU.

    python bench/plot.py bench/results/2026-11-25-h100-80gb-hbm3.json

The PNG is written next to the JSON with the same stem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def label(run: dict) -> str:
    n = run["images_per_gpu"]
    text = f"{run['name']} {n} img"
    if run.get("requests", 0) > 3:
        text = f"{run['name']} {run['requests']} x {n} img at once"
    if run.get("image_format") not in (None, "png", "none"):
        text += f" {run['image_format']}"
    return text + " +stream" if run["stream"] else text


def plot(path: Path) -> Path:
    data = json.loads(path.read_text())
    runs = data["runs"]
    labels = [label(r) for r in runs]
    palette = {"seed_recipe": "tab:gray", "bare_pipeline": "tab:green"}
    colors = [palette.get(r["name"], "tab:blue") for r in runs]
    hatches = ["//" if r["stream"] else "" for r in runs]

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    panels = [
        ("s_per_image", "seconds per image (lower is better)", "{:.3f}"),
        ("img_per_s_per_gpu", "images per second per GPU (higher is better)", "{:.2f}"),
    ]
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        values = [r[key] for r in runs]
        bars = ax.bar(range(len(runs)), values, color=colors, hatch=hatches, edgecolor="black")
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(runs)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    fig.suptitle(
        f"{data['device']}, {data['model']}, {data['width']}x{data['height']}, {data['steps']} steps, "
        f"torch {data['torch']}, diffusers {data['diffusers']}",
        fontsize=10,
    )
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: plot.py RESULTS.json")
    print(plot(Path(sys.argv[1])))
