"""SDXL fixtures: the tiny model in a private cache, one 2-rank runner and one direct worker per session.

Starting a runner costs seconds (two processes import diffusers), so every SDXL test
module shares the same started 2-rank runner; tests must leave it healthy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def sdxl2(tiny_cache: str) -> Iterator[Any]:
    """A started 2-rank CPU runner of SDXLWorker(model="tiny"), blocking (sync) facade."""
    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker

    runner = DistributedRunner(SDXLWorker, world_size=2, device="cpu")
    with runner.sync(model="tiny") as sync:
        yield sync


@pytest.fixture(scope="session")
def direct(tiny_cache: str) -> Any:
    """An SDXLWorker built directly (world size 1, no torch.distributed, no runner)."""
    from gridgen.sdxl import SDXLWorker

    worker = SDXLWorker()
    worker.setup(model="tiny")
    return worker
