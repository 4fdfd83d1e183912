"""``bench/family_levers.py`` run as a script on the CPU with the tiny FLUX.1: what its records claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bare_mode_records_are_not_encoded_and_compare_latents_too(family_cache: str, tmp_path: Path) -> None:
    """The bare pipeline stops at decoded tensors: its records must not claim PNG. Each lever's
    quality names its latents' relative L2 from eager's beside the image differences."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")])}
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "family_levers.py"), "bare", "--model", "tiny-flux", "--device", "cpu",
         "--size", "64", "--steps", "2", "--rounds", "1", "--levers", "steps:1", "--out", str(tmp_path)],
        check=True, env=env, capture_output=True, timeout=100,
    )
    records = [json.loads(line) for line in (tmp_path / "levers.jsonl").read_text().splitlines()]
    assert [r.get("lever") for r in records] == ["eager", "steps:1", "steps:1"]
    assert {r["image_format"] for r in records} == {"none (tensors, not encoded)"}
    assert records[-1]["steps"] == 1
    quality = records[-1]["quality_vs_eager"]
    assert len(quality) == 2  # two seeds
    assert all(0 < q["latents_rel_l2"] < 10 and q["psnr_db"] > 0 for q in quality)  # 1 step is not 2
