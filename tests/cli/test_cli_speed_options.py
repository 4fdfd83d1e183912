"""The speed options (--optimize, --warmup, --dtype, --compile-cache): checked before any
worker starts, and passed to the workers' setup."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gridgen._preflight import UsageError, worker_options
from gridgen.cli import build_parser
from gridgen.diffusion.families import FLUX_DEV, SDXL

from helpers.cli import run_cli


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_the_options_become_setup_arguments(tmp_path: Path) -> None:
    cache = tmp_path / "made" / "sdxl.bin"
    args = _args("--optimize", "compile", "--warmup", "1,8", "--dtype", "bf16", "--compile-cache", str(cache))
    assert worker_options(args, SDXL) == {
        "optimize": "compile", "warmup": [1, 8], "dtype": "bf16", "compile_cache": str(cache),
    }
    assert cache.parent.is_dir()  # made now: rank 0 writes the file there after the warm-up
    assert worker_options(_args(), SDXL) == {}  # the worker's own defaults


@pytest.mark.parametrize(
    ("argv", "family", "message"),
    [
        (["--quantize", "fp8", "--optimize", "compile", "--device", "cpu"], FLUX_DEV, '--quantize "fp8" needs a CUDA GPU'),
        (["--quantize", "fp8", "--device", "cpu"], SDXL, '--quantize "fp8" is for the transformer families'),
        (["--step-cache", "0.1"], SDXL, "--step-cache needs diffusers' cache hooks, which SDXL lacks"),
        (["--step-cache", "0"], FLUX_DEV, r"--step-cache must be a threshold in \(0, 1\], got 0.0"),
        (["--cpu-offload", "--device", "cpu"], FLUX_DEV, "--cpu-offload: moves models to a GPU"),
        (["--compile-cache", "x.bin"], SDXL, "--compile-cache: only used with --optimize compile"),
        (["--optimize", "graphs", "--compile-cache", "x.bin"], SDXL, "only used with --optimize compile"),
    ],
)
def test_options_the_model_cannot_use_are_usage_errors(argv: list[str], family: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        worker_options(_args(*argv), family)


def test_a_compile_cache_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--compile-cache: .* is a folder; name the cache file"):
        worker_options(_args("--optimize", "compile", "--compile-cache", str(tmp_path)), SDXL)


def test_bad_values_exit_2_before_any_worker_starts() -> None:
    warmup = run_cli("serve", "--model", "tiny", "--warmup", "1,0")
    assert warmup.returncode == 2 and "--warmup: must be whole numbers >= 1 separated by commas" in warmup.stderr
    flux = run_cli("generate", "a cat", "--model", "tiny-flux", "--step-cache", "1.5")
    assert flux.returncode == 2 and "--step-cache must be a threshold in (0, 1], got 1.5" in flux.stderr
    assert "starting" not in flux.stderr


def test_generate_warms_up_at_the_requested_size() -> None:
    # Before, the warm-up always ran at 1024x1024: on a CPU, minutes before a 64x64 request.
    args = build_parser().parse_args(["generate", "a cat", "--warmup", "1", "--width", "64", "--height", "128"])
    from gridgen.cli._generate import _request_payload, _validate

    request = _validate(_request_payload(args), SDXL)
    assert worker_options(args, SDXL, request_size=(request.width, request.height)) == {
        "warmup": [1], "warmup_size": (64, 128),
    }
    sized = build_parser().parse_args(["generate", "a cat", "--warmup", "1", "--warmup-size", "512x256"])
    assert worker_options(sized, SDXL, request_size=(1024, 1024))["warmup_size"] == (512, 256)


def test_serve_takes_a_warmup_size() -> None:
    assert worker_options(_args("--warmup", "1,4", "--warmup-size", "512X768"), SDXL) == {
        "warmup": [1, 4], "warmup_size": (512, 768),
    }
    assert "warmup_size" not in worker_options(_args("--warmup", "1"), SDXL)  # the worker's 1024x1024


@pytest.mark.parametrize(
    ("argv", "family", "message"),
    [
        (["--warmup-size", "512x512"], SDXL, r"--warmup-size: only used with --warmup"),
        (["--warmup", "1", "--warmup-size", "520x512"], FLUX_DEV, r"--warmup-size 520x512: width .*multiple of 16"),
        (["--warmup", "1", "--warmup-size", "4096x512"], SDXL, r"--warmup-size 4096x512: width .*2048"),
    ],
)
def test_bad_warmup_sizes_are_usage_errors(argv: list[str], family: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        worker_options(_args(*argv), family)


def test_a_malformed_warmup_size_exits_2() -> None:
    result = run_cli("serve", "--model", "tiny", "--warmup", "1", "--warmup-size", "512")
    assert result.returncode == 2
    assert "--warmup-size: must be WIDTHxHEIGHT in pixels, e.g. 512x512, got '512'" in result.stderr


# Two runs of the command, each starting a worker: 18 s alone, 44 s on a loaded two-core machine.
@pytest.mark.timeout(180)
def test_dtype_reaches_the_workers(tmp_path: Path) -> None:
    grids = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.png"
        result = run_cli(
            "generate", "a lighthouse", "--model", "tiny", "--workers", "1", "--device", "cpu",
            "--width", "64", "--height", "64", "--steps", "2", "--seed", "3",
            "--optimize", "none", "--warmup", "1", "--dtype", dtype, "-o", str(out), timeout=80,
        )
        assert result.returncode == 0, result.stderr
        assert "denoising" not in result.stderr and "\r" not in result.stderr  # no bar: not a terminal
        with Image.open(out) as image:
            grids[dtype] = np.asarray(image, dtype=np.int16)
    assert np.abs(grids["fp32"] - grids["bf16"]).max() > 0  # the same seed, another precision
