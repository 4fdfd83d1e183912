"""LoRA on the command line: ``--lora``, ``--lora-dir``, ``--max-loras``, ``--max-lora-bytes``
(setup arguments of generate and serve) and generate's ``--use-lora NAME[:SCALE]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gridgen._preflight import worker_options
from gridgen.cli._parser import build_parser
from gridgen.diffusion import SDXL
from gridgen.sdxl import SDXLWorker

from helpers.cli import run_cli
from helpers.lora import SMALL, apart, pixels, with_loras


@pytest.fixture(scope="module")
def adapters(lora_folders: dict[str, Path]) -> dict[str, Path]:
    return {name: lora_folders["tiny"] / f"{name}.safetensors" for name in ("a", "b")}


def test_the_options_become_setup_arguments(adapters: dict[str, Path]) -> None:
    folder = str(adapters["a"].parent)
    args = build_parser().parse_args([
        "serve", "--model", "tiny", "--lora", f"first={adapters['a']}", "--lora", f"second={adapters['b']}",
        "--lora-dir", folder, "--max-loras", "3", "--max-lora-bytes", "64M", "--lora-max-rank", "16",
        "--lora-mode", "slot", "--lora-layers", "all",
    ])
    options = worker_options(args, SDXL)
    assert options["loras"] == {"first": str(adapters["a"]), "second": str(adapters["b"])}
    assert options["lora_dir"] == folder
    assert (options["max_loras"], options["max_lora_bytes"], options["lora_max_rank"]) == (3, 64 << 20, 16)
    assert (options["lora_mode"], options["lora_layers"]) == ("slot", "all")


def test_bad_adapter_options_exit_2_before_any_worker(adapters: dict[str, Path], tiny_cache: str) -> None:
    env = {"GRIDGEN_CACHE": tiny_cache}
    cases = [
        (["--lora", "a/b=" + str(adapters["a"])], "--lora: loras: adapter 'a/b'"),
        (["--lora", "a=/no/such/file.safetensors"], "--lora: LoRA adapter '/no/such/file.safetensors' does not exist"),
        (["--lora", "a"], "--lora 'a': write NAME=PATH"),
        (["--lora-dir", "/no/such/folder"], "--lora-dir: lora_dir '/no/such/folder' is not a folder"),
        (["--lora", f"a={adapters['a']}", "--use-lora", "zz"], "--use-lora: no adapter named 'zz' (registered: a)"),
        (["--lora", f"a={adapters['a']}", "--use-lora", "a:lots"], "--use-lora 'a:lots': SCALE must be a number"),
        (["--lora", f"a={adapters['a']}", "--use-lora", "a:3"], "--use-lora (loras.0.scale)"),
        (["--max-lora-bytes", "lots"], "--max-lora-bytes: not a size: 'lots'"),
    ]
    for extra, message in cases:
        result = run_cli("generate", "a cat", "--model", "tiny", *extra, env=env)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr, (extra, result.stderr)
        assert "starting" not in result.stderr


def test_generate_applies_the_named_adapter(adapters: dict[str, Path], tiny_cache: str, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    result = run_cli(
        "generate", SMALL["prompt"], "--model", "tiny", "--workers", "2", "--device", "cpu",
        "--width", "64", "--height", "64", "--steps", "2", "--num-images", "1", "--seed", str(SMALL["seed"]),
        "--lora", f"ink={adapters['a']}", "--use-lora", "ink:0.8", "-o", str(grid),
        env={"GRIDGEN_CACHE": tiny_cache}, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(grid) as image:
        got = [np.asarray(image.convert("RGB"))]
    worker = SDXLWorker()
    worker.setup(model="tiny", loras={"ink": str(adapters["a"])})
    assert apart(got, pixels(worker(**with_loras(SMALL, ("ink", 0.8))))) < 0.05
    assert apart(got, pixels(worker(**SMALL))) > 1.0
