"""LoRA fixtures: the tiny models' adapters, made once per session (each costs a pipeline load).

Tests read these files and never change the folders; a test that adds or breaks files
copies what it needs into a folder of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gridgen.sdxl import SDXLWorker

from helpers.lora import make_loras, tiny_lora_worker


@pytest.fixture(scope="session")
def lora_folders(family_cache: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per tiny model (``tiny``, ``tiny-flux``, ``tiny-sd3``), a folder of three adapters
    ``a``, ``b``, ``c`` (rank 4, on the attention projections)."""
    folders = {}
    for model in ("tiny", "tiny-flux", "tiny-sd3"):
        folders[model] = tmp_path_factory.mktemp(f"loras-{model}")
        make_loras(model, folders[model], {"a": 1, "b": 2, "c": 3})
    return folders


@pytest.fixture(scope="module")
def folder(lora_folders: dict[str, Path]) -> Path:
    """The tiny SDXL's adapters ``a``, ``b``, ``c``."""
    return lora_folders["tiny"]


@pytest.fixture(scope="module")
def eager(folder: Path) -> SDXLWorker:
    """The tiny SDXL on the eager path (PEFT adapters): the reference for the fast paths."""
    from gridgen.diffusion.lora_cache import PeftAdapters

    return tiny_lora_worker(folder, PeftAdapters, optimize="none")
