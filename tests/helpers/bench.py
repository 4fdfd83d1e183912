"""The benchmark scripts under ``bench/``, imported by path (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(stem: str) -> ModuleType:
    """``bench/<stem>.py`` as a fresh module named ``gridgen_<stem>``."""
    spec = importlib.util.spec_from_file_location(f"gridgen_{stem}", BENCH / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
