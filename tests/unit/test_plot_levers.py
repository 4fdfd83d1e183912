"""bench/plot_levers.py draws one bar per measured record, of one family when asked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers.bench import load_bench


def test_one_bar_per_record_of_the_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = load_bench("plot_levers")
    results = tmp_path / "levers.json"
    results.write_text(json.dumps({"about": "test", "results": [
        {"mode": "runner", "family": "flux-dev", "setup": '{"optimize": "compile"}', "startup_s": 40.0},
        {"mode": "runner", "family": "flux-dev", "setup": '{"optimize": "compile"}', "images_per_request": 4,
         "s_per_image": 3.72},
        {"mode": "bare", "family": "flux-dev", "lever": "compile+cudnn", "s_per_image": 3.92},
        {"mode": "diffusers", "family": "flux-dev", "lever": "eager", "s_per_image": 5.25},
        {"mode": "runner", "family": "flux-schnell", "setup": "{}", "s_per_image": 0.63},
        {"mode": "runner", "family": "flux-dev", "setup": '{"optimize": "compile"}', "images_per_request": 1,
         "previews": 5, "preview": "taesd", "s_per_image": 3.88},
        {"mode": "runner", "family": "flux-dev", "setup": '{"optimize": "compile", "cpu_offload": true}',
         "images_per_request": 1, "s_per_image": 29.44},
    ]}))
    out = tmp_path / "chart.svg"
    monkeypatch.setattr(sys, "argv", ["plot_levers.py", str(out), str(results), "--family", "flux-dev",
                                      "--line", "3.5", "--title", "FLUX.1-dev", "--exclude", "cpu_offload"])
    plot.main()
    assert "4 bars" in capsys.readouterr().out
    chart = out.read_text()
    assert "gridgen runner, optimize=compile, 4 images" in chart
    assert "bare pipeline, compiled + cudnn, 1 image" in chart
    assert "plain diffusers, eager, 1 image" in chart
    assert "0.63 s" not in chart  # schnell is another family
    assert "target 3.5 s" in chart
    assert "gridgen runner, optimize=compile, 1 image, previews every 5 (TAESD)" in chart
    assert "29.44 s" not in chart  # left out by --exclude
