"""FLUX.1 / SD3.5 fixtures: one direct (world size 1) worker per tiny family."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def direct_workers(family_cache: str) -> dict[str, Any]:
    """One worker per tiny family built directly: one rank, no torch.distributed, no runner."""
    from gridgen.diffusion import worker_for

    workers: dict[str, Any] = {}
    for model in ("tiny-flux", "tiny-sd3"):
        worker = worker_for(model)()
        worker.setup(model=model)
        workers[model] = worker
    return workers
