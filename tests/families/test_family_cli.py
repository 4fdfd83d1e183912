"""``gridgen generate --model tiny-flux`` / ``tiny-sd3`` on two CPU workers; a field the family
refuses exits 2 before any worker starts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers.cli import run_cli


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=timeout)


def test_flux_refuses_a_negative_prompt_before_starting_workers() -> None:
    started = time.monotonic()
    result = _run("generate", "a cat", "--model", "tiny-flux", "--negative-prompt", "blurry", "--width", "72")
    assert result.returncode == 2
    assert "--negative-prompt (negative_prompt): not supported by FLUX.1-dev" in result.stderr
    assert "[rule: unsupported_field]" in result.stderr
    assert "allowed:" not in result.stderr and "preview_every" not in result.stderr  # the request's field names
    assert "--width (width)" in result.stderr and "multiple of 16" in result.stderr
    assert "starting" not in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_generate_writes_the_grid(tmp_path: Path, family_cache: str, model: str) -> None:
    grid = tmp_path / "grid.webp"
    extra = ["--negative-prompt", "blurry", "--guidance", "4"] if model == "tiny-sd3" else ["--guidance", "2"]
    result = _run(
        "generate", "a lighthouse at dawn", "--model", model, "--workers", "2", "--device", "cpu",
        "--width", "64", "--height", "64", "--steps", "2", "--num-images", "3", "--seed", "7",
        *extra, "-o", str(grid),
        env={"GRIDGEN_CACHE": family_cache},
    )
    assert result.returncode == 0, result.stderr
    with Image.open(grid) as image:
        assert image.format == "WEBP"
        assert image.size == (128, 128)  # 3 cells of 64x64 in a 2 x 2 grid
    summary = result.stdout.strip().splitlines()[-1]
    assert "3 image(s) 64x64" in summary and "seeds 7..9" in summary
    assert f"with model {model!r}" in result.stderr
