"""A worker's own ``batch_sizes`` (declared in setup, sent with ``ready``) shape the merges.

Two CPU ranks, BatchProbeWorker (``setup(batch_sizes=...)``). Requests submitted in one
go are all queued before the dispatcher looks, so compatible ones merge.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gridgen import DistributedRunner, StartupError
from gridgen.testing import BatchProbeWorker, ProbeWorker

from helpers.runtime import live


async def _calls(runner: DistributedRunner[Any], count: int) -> list[list[int]]:
    """Submit ``count`` one-unit requests at once; the request ids of each call, in order."""
    handles = [runner.submit({"batch": "a", "steps": 1, "delay": 0.01}) for _ in range(count)]
    results = await asyncio.gather(*(h.result() for h in handles))
    return list(dict.fromkeys(tuple(result["batch"]) for result in results))  # type: ignore[misc]


def test_merges_form_only_the_declared_totals() -> None:
    with live(BatchProbeWorker, max_batch=8, setup={"batch_sizes": [3, 1, 3]}) as rt:
        assert rt.runner.worker_batch_sizes == (1, 3)  # sorted, duplicates dropped
        assert rt.runner.batch_sizes is None  # the option is still unset
        calls = rt.run(lambda runner: _calls(runner, 5))
    assert [len(call) for call in calls] == [3, 1, 1]


def test_the_runner_option_wins_over_the_declared_sizes() -> None:
    with live(BatchProbeWorker, max_batch=8, batch_sizes=(2,), setup={"batch_sizes": [1, 3]}) as rt:
        calls = rt.run(lambda runner: _calls(runner, 5))
    assert [len(call) for call in calls] == [2, 2, 1]


def test_without_a_declaration_any_total_merges() -> None:
    with live(BatchProbeWorker, max_batch=8) as rt:
        assert rt.runner.worker_batch_sizes is None
        calls = rt.run(lambda runner: _calls(runner, 5))
    assert [len(call) for call in calls] == [5]


class NoMergeWorker(ProbeWorker):
    """No batch_key: an attribute of that name means something else to this worker."""

    def setup(self, **kwargs: Any) -> None:
        super().setup(**kwargs)
        self.batch_sizes = {"small": 1}  # type: ignore[assignment]


def test_a_worker_that_never_merges_may_use_the_name_for_anything() -> None:
    with live(NoMergeWorker) as rt:
        assert rt.runner.worker_batch_sizes is None
        assert rt.run(lambda runner: runner.invoke({"op": "echo", "message": "hi"}))["echo"] == "hi"


@pytest.mark.parametrize("sizes", [[0], [], "8", [1.5]])
def test_a_bad_declaration_fails_setup_naming_the_rule(sizes: Any) -> None:
    sync = DistributedRunner(BatchProbeWorker, world_size=2, device="cpu").sync(batch_sizes=sizes)
    try:
        with pytest.raises(StartupError, match=r"BatchProbeWorker\.batch_sizes must be None or a non-empty collection of ints >= 1"):
            sync.start(timeout=60)
    finally:
        sync.stop(timeout=5)
