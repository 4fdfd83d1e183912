"""bench/soak.py expects what the runtime does: an invalid SDXL payload is rejected on the
host (InvalidRequestError, before the queue), and the soak exits 1 on anything unexpected."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def soak() -> Any:
    spec = importlib.util.spec_from_file_location("gridgen_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_the_soaks_invalid_and_normal_requests_end_as_it_expects(sdxl2: Any, soak: Any) -> None:
    table = soak.payloads("sdxl", 64, 2)
    stats = soak.Stats()
    for kind, outcome in (("invalid", "rejected"), ("invoke", "completed")):
        request = soak.one_request(
            sdxl2.runner, 0, kind, table[kind], stats, random.Random(0), 0, soak.REJECTED_BY["sdxl"]
        )
        assert sdxl2._call(request) == outcome, kind


def test_the_soak_fails_on_anything_unexpected_or_lost(soak: Any) -> None:
    def status(**outcomes: int) -> int:
        stats = soak.Stats()
        stats.outcomes.update(outcomes)
        return int(soak.exit_status({"stats": stats, "final_ok": True}))

    assert status(completed=10, rejected=2) == 0
    assert status(completed=10, unexpected=1) == 1
    assert status(completed=10, LOST=1) == 1
    assert soak.exit_status({"stats": soak.Stats(), "final_ok": False}) == 1
