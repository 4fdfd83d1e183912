"""A rank hangs inside a request (a deadlock, a stuck driver call, an endless loop).

The request's time limit fires on time, the hung rank cannot stop cooperatively, so after
``cancel_grace`` the group is rebuilt, and the next request, already queued behind the
hung one, runs on the new group. ``test_cancel.py`` covers rank 1 with a per-call
timeout; this file covers the runner-wide ``request_timeout``, rank 0, streams and a
stream's ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gridgen import DistributedRunner, RequestTimeout

from helpers.runtime import LiveRunner, live

TIMEOUT = 1.0
CANCEL_GRACE = 2.0


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live(request_timeout=TIMEOUT, cancel_grace=CANCEL_GRACE) as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


async def _hang_then_next(runner: DistributedRunner[Any], hung: Any) -> dict[str, Any]:
    """Start ``hung`` (a coroutine that hangs), queue a normal request behind it, time both."""
    loop = asyncio.get_running_loop()
    pids = runner.pids
    started = loop.time()
    hung_task = asyncio.create_task(hung)
    await asyncio.sleep(0.05)
    # queued behind the hung request, with its own, longer limit
    following = asyncio.create_task(runner.invoke({"op": "allreduce"}, timeout=60))
    outcome = (await asyncio.gather(hung_task, return_exceptions=True))[0]
    timed_out_after = loop.time() - started
    result = await following
    return {
        "outcome": outcome, "timed_out_after": timed_out_after, "next": result,
        "next_after": loop.time() - started, "pids": (pids, runner.pids), "ready": runner.ready,
    }


def _check(out: dict[str, Any]) -> None:
    assert isinstance(out["outcome"], RequestTimeout), repr(out["outcome"])
    assert isinstance(out["outcome"], TimeoutError)
    assert TIMEOUT - 0.05 < out["timed_out_after"] < TIMEOUT + 1.0
    assert out["next"] == {"sum": 3}
    # rebuilt after cancel_grace: not waiting for the hung rank (it sleeps "forever")
    assert out["next_after"] < TIMEOUT + CANCEL_GRACE + 25
    before, after = out["pids"]
    assert not set(before) & set(after)
    assert out["ready"]


@pytest.mark.parametrize("rank", [0, 1])
def test_invoke_on_a_hung_rank_times_out_and_the_group_is_rebuilt(rt: LiveRunner, rank: int) -> None:
    _check(rt.run(lambda runner: _hang_then_next(runner, runner.invoke({"op": "hang", "on_rank": rank}))))


def test_stream_on_a_hung_rank_times_out_and_the_group_is_rebuilt(rt: LiveRunner) -> None:
    async def consume(runner: DistributedRunner[Any]) -> list[Any]:
        return [item async for item in runner.stream({"op": "hang", "on_rank": 0})]

    _check(rt.run(lambda runner: _hang_then_next(runner, consume(runner))))


def test_stream_idle_timeout_on_a_hung_rank(rt: LiveRunner) -> None:
    async def consume(runner: DistributedRunner[Any]) -> list[Any]:
        # without idle_timeout the runner-wide 1 s limit would fire; make it the idle one
        return [item async for item in runner.stream({"op": "hang", "on_rank": 1}, timeout=60, idle_timeout=0.5)]

    async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
        return await _hang_then_next(runner, consume(runner))

    out = rt.run(scenario)
    assert isinstance(out["outcome"], RequestTimeout) and "no stream item" in str(out["outcome"])
    assert 0.45 < out["timed_out_after"] < 1.5
    assert out["next"] == {"sum": 3}
    assert not set(out["pids"][0]) & set(out["pids"][1])
