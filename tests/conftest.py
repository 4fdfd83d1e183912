"""Shared fixtures: started runners on two CPU ranks, reused within a test module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from runtime_helpers import LiveRunner, live

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def probe() -> Iterator[LiveRunner]:
    """Two CPU ranks running ProbeWorker, shared by a test module; tests must leave it healthy."""
    with live(error_grace=2.0, cancel_grace=5.0) as rt:
        yield rt
