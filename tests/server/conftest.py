"""HTTP service fixtures: live servers over two CPU ranks, started once per session.

``sdxl_server``: ``create_app`` over SDXLWorker(model="tiny"). ``probe_server``: over
``ProbeWorker`` with a small request model, ``max_queue=2`` and ``auto_restart``, for the
error paths. Tests must leave both healthy (nothing running, nothing queued).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from helpers.server import LiveServer, ProbeRequest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def sdxl_server(tiny_cache: str) -> Iterator[LiveServer]:
    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker
    from gridgen.server import create_app

    runner = DistributedRunner(
        SDXLWorker,
        world_size=2,
        device="cpu",
        setup_kwargs={"model": "tiny"},
        max_queue=4,
        cancel_grace=20.0,
    )
    with LiveServer(create_app(runner, title="gridgen test"), runner) as server:
        yield server


@pytest.fixture(scope="session")
def probe_server() -> Iterator[LiveServer]:
    from gridgen import DistributedRunner
    from gridgen.server import create_app
    from gridgen.testing import ProbeWorker

    runner = DistributedRunner(
        ProbeWorker,
        world_size=2,
        device="cpu",
        max_queue=2,
        error_grace=2.0,
        cancel_grace=5.0,
        auto_restart=True,
    )
    with LiveServer(create_app(runner, request_model=ProbeRequest, title="probe"), runner) as server:
        yield server
