"""The gridgen command: generate on the tiny model writes the grid; bad input exits 2 before any worker starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridgen.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_help_explains_every_option() -> None:
    top = _run("--help")
    assert top.returncode == 0
    assert "generate" in top.stdout and "serve" in top.stdout
    generate = _run("generate", "--help")
    assert generate.returncode == 0
    for option in (
        "PROMPT", "--model", "--num-images", "--workers", "--device", "--steps", "--width", "--height",
        "--seed", "--guidance", "--negative-prompt", "--output", "--save-dir", "--preview-every",
    ):
        assert option in generate.stdout, option
    serve = _run("serve", "--help")
    assert serve.returncode == 0
    for option in ("--model", "--workers", "--device", "--host", "--port", "--max-queue"):
        assert option in serve.stdout, option
    assert "127.0.0.1" in serve.stdout  # loopback by default


def test_invalid_request_exits_2_naming_the_field_before_starting_workers() -> None:
    started = time.monotonic()
    result = _run("generate", "a cat", "--model", "tiny", "--width", "100", "--steps", "0")
    assert result.returncode == 2
    assert "width" in result.stderr and "multiple of 8" in result.stderr and "multiple_of" in result.stderr
    assert "--steps (num_inference_steps)" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "starting" not in result.stderr  # no worker was started
    assert time.monotonic() - started < 30


def test_unknown_output_format_and_bad_workers_exit_2() -> None:
    fmt = _run("generate", "a cat", "-o", "grid.gif")
    assert fmt.returncode == 2
    assert "-o/--output" in fmt.stderr and ".gif" in fmt.stderr
    workers = _run("generate", "a cat", "--workers", "0")
    assert workers.returncode == 2
    assert "--workers" in workers.stderr
    missing = _run("generate", "a cat", "--model", "./no/such/model")
    assert missing.returncode == 2
    assert "--model: no such folder: ./no/such/model" in missing.stderr


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("gridgen-cli-cache"))


def test_generate_writes_the_grid_and_the_images(tmp_path: Path, tiny_cache: str) -> None:
    grid = tmp_path / "out" / "grid.png"
    save_dir = tmp_path / "singles"
    result = _run(
        "generate", "a lighthouse at dawn", "--model", "tiny", "--workers", "2", "--device", "cpu",
        "--width", "64", "--height", "64", "--steps", "2", "--num-images", "3", "--seed", "7",
        "-o", str(grid), "--save-dir", str(save_dir),
        env={"GRIDGEN_CACHE": tiny_cache},
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(grid) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)  # 3 cells of 64x64 in a 2 x 2 grid
        assert image.mode == "RGB"
    singles = sorted(p.name for p in save_dir.iterdir())
    assert singles == ["00-seed7.png", "01-seed8.png", "02-seed9.png"]
    for name in singles:
        with Image.open(save_dir / name) as image:
            assert image.size == (64, 64)
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"wrote {grid}")
    assert "3 image(s) 64x64" in summary and "seeds 7..9" in summary
    assert re.search(r"total \d+\.\d+s \(denoise \d+\.\d+s", summary)
    assert "denoising" in result.stderr  # the progress bar, fed by the streamed steps
    assert "Loading pipeline components" not in result.stderr  # workers' loading noise is off
