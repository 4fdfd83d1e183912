"""The gridgen command: generate on the tiny model writes the grid; bad input exits 2 before any worker starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers.cli import run_cli

_run = run_cli


def test_help_explains_every_option() -> None:
    top = _run("--help")
    assert top.returncode == 0
    assert "generate" in top.stdout and "serve" in top.stdout
    generate = _run("generate", "--help")
    assert generate.returncode == 0
    for option in (
        "PROMPT", "--model", "--num-images", "--workers", "--device", "--steps", "--width", "--height",
        "--seed", "--guidance", "--negative-prompt", "--output", "--save-dir", "--preview-every",
        "--optimize", "--warmup", "--dtype", "--compile-cache",
    ):
        assert option in generate.stdout, option
    serve = _run("serve", "--help")
    assert serve.returncode == 0
    for option in (
        "--model", "--workers", "--device", "--host", "--port", "--max-queue", "--optimize", "--warmup",
    ):
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


def test_a_misspelt_builtin_model_gets_the_closest_name() -> None:
    result = _run("generate", "a cat", "--model", "tiny-foo", "--device", "cpu", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--model tiny-foo: not a built-in model" in result.stderr
    assert "did you mean tiny-flux?" in result.stderr and "starting" not in result.stderr


def test_an_output_ending_in_a_slash_is_a_folder() -> None:
    from gridgen._preflight import output_file

    assert output_file("out/") == str(Path("out") / "grid.png")
    assert output_file("out/grid.webp") == "out/grid.webp"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("gridgen-cli-cache"))


def test_generate_writes_the_grid_and_the_images(tmp_path: Path, tiny_cache: str) -> None:
    grid = tmp_path / "out" / "grid.png"  # "-o out/": a folder, which gets grid.png
    save_dir = tmp_path / "singles"
    result = _run(
        "generate", "a lighthouse at dawn", "--model", "tiny", "--workers", "2", "--device", "cpu",
        "--width", "64", "--height", "64", "--steps", "2", "--num-images", "3", "--seed", "7",
        "-o", f"{tmp_path / 'out'}/", "--save-dir", str(save_dir), "--progress",
        env={"GRIDGEN_CACHE": tiny_cache},
        timeout=100,
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
    assert "denoising" in result.stderr  # the progress bar (asked for), fed by the streamed steps
    assert "Loading pipeline components" not in result.stderr  # workers' loading noise is off
    assert "starting 2 worker(s) on cpu with model 'tiny'" in result.stderr  # not "cpu, cpu"


def test_help_prints_each_default_once() -> None:
    for command in ("generate", "serve"):
        text = _run(command, "--help").stdout
        assert "(default: None)" not in text
        flat = " ".join(text.split())
        for option_help in re.split(r"\s(?=-{1,2}[a-z])", flat):
            assert option_help.count("default") <= 1, option_help
    generate = " ".join(_run("generate", "--help").stdout.split())
    assert "(default: grid.png)" in generate and "default: 1)" in generate


SMALL_ARGS = ("--model", "tiny", "--device", "cpu", "--width", "64", "--height", "64", "--steps", "1")


def test_bad_output_paths_exit_2_naming_path_and_reason_before_any_worker(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    cases = [
        (("--save-dir", "/proc/nope"), "--save-dir", "/proc/nope", "No such file or directory"),
        (("--save-dir", str(afile / "sub")), "--save-dir", str(afile / "sub"), "is a file, not a folder"),
        (("-o", str(afile / "grid.png")), "-o/--output", str(afile), "is a file, not a folder"),
        (("-o", str(tmp_path / "folder.png")), "-o/--output", str(tmp_path / "folder.png"), "is a folder"),
    ]
    for extra, option, path, reason in cases:
        result = _run("generate", "a cat", *SMALL_ARGS, *extra, timeout=60)
        assert result.returncode == 2, (extra, result.stderr)
        assert option in result.stderr and path in result.stderr and reason in result.stderr, result.stderr
        assert "starting" not in result.stderr and "Traceback" not in result.stderr


def test_missing_model_is_one_short_message_with_commands_that_exist(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _run(
        "generate", "a cat", "--device", "cpu", "-o", str(tmp_path / "g.png"),
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")},
    )
    assert result.returncode == 2, result.stderr
    assert "starting" not in result.stderr  # found on the host, before any worker
    assert "Traceback" not in result.stderr and "[rank" not in result.stderr
    assert "--model:" in result.stderr and "stabilityai/stable-diffusion-xl-base-1.0" in result.stderr
    assert "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in result.stderr
    assert "--model tiny" in result.stderr and "huggingface-cli" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(torch.cuda.is_available())"]).returncode,
    reason="needs a machine without CUDA",
)
def test_device_cuda_without_cuda_is_a_usage_error() -> None:
    result = _run("generate", "a cat", "--model", "tiny", "--device", "cuda", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--device cuda: no CUDA device is visible" in result.stderr and "--device cpu" in result.stderr
    assert "device='cpu'" not in result.stderr and "starting" not in result.stderr


def test_serve_on_a_busy_port_exits_2_before_starting_workers() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = _run("serve", "--model", "tiny", "--device", "cpu", "--port", str(port), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "--port" in result.stderr and "starting" not in result.stderr
    assert time.monotonic() - started < 30


def test_serve_answers_health_while_the_workers_start_then_ready(tiny_cache: str) -> None:
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "gridgen.cli", "serve", "--model", "tiny", "--device", "cpu", "--workers", "2",
         "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GRIDGEN_CACHE": tiny_cache},
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", banner)
        assert match, banner
        url = match.group(1)
        assert "on cpu with model 'tiny'" in banner
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        first = httpx.get(f"{url}/ready", timeout=10)
        assert first.status_code == 503 and first.json()["state"] in ("new", "starting")
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
