"""Shared fixtures: started runners on two CPU ranks, reused within a test module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from helpers.runtime import LiveRunner, live

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private GRIDGEN_CACHE holding the tiny SDXL, for every test that needs the model.

    Set before any worker spawns, so ranks inherit it; built once here rather than
    racing in two ranks.
    """
    path = str(tmp_path_factory.mktemp("gridgen-cache"))
    old = os.environ.get("GRIDGEN_CACHE")
    os.environ["GRIDGEN_CACHE"] = path
    from gridgen.sdxl import ensure_tiny_sdxl

    ensure_tiny_sdxl()
    yield path
    if old is None:
        os.environ.pop("GRIDGEN_CACHE", None)
    else:
        os.environ["GRIDGEN_CACHE"] = old


@pytest.fixture(scope="module")
def shared_probe() -> Iterator[LiveRunner]:
    """Two CPU ranks running ProbeWorker, started once per test module."""
    with live(error_grace=2.0, cancel_grace=5.0) as rt:
        yield rt


@pytest.fixture()
def probe(shared_probe: LiveRunner) -> LiveRunner:
    """The module's ProbeWorker runner, ready and idle whatever the test before left."""
    return shared_probe.ensure_healthy()


@pytest.fixture(scope="session")
def family_cache(tiny_cache: str) -> str:
    """``tiny_cache`` with tiny-flux and tiny-sd3 built once, before any rank starts."""
    from gridgen.diffusion import ensure_tiny

    for name in ("tiny-flux", "tiny-sd3"):
        ensure_tiny(name)
    return tiny_cache
