"""The synchronous facade for scripts and notebooks."""

from __future__ import annotations

from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker


def test_sync_facade() -> None:
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    with runner.sync() as r:
        assert r.invoke({"op": "allreduce"}) == {"sum": 3}
        items = list(r.stream({"op": "echo", "items": 1, "on_rank": 0}))
        assert items[0] == {"i": 0, "rank": 0} and items[1]["rank"] == 0
    assert runner.state == "stopped"
