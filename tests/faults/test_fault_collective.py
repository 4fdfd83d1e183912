"""A rank raises before a collective while the other waits in it.

The caller gets a typed :class:`WorkerError` naming the rank, with the remote traceback,
long before the collective timeout; the group is rebuilt and the next request works.
``test_worker_error.py`` covers rank 0 raising with the default order of timeouts; this
file covers rank 1, a stream, and the case where the waiting rank's collective times out
*before* ``error_grace`` runs out (every rank answers, yet the group is poisoned: it used
to stay "ready" while every later collective failed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gridgen import WorkerError

from helpers.runtime import LiveRunner, live

COLLECTIVE_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live(error_grace=2.0, collective_timeout=30.0) as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


def _raise_then_recover(rt: LiveRunner, rank: int, *, stream: bool, limit: float) -> WorkerError:
    pids_before = rt.runner.pids
    payload = {"op": "raise", "on_rank": rank, "message": f"bad input on {rank}"}
    started = time.monotonic()
    with pytest.raises(WorkerError) as info:
        if stream:
            list(rt.sync.stream(payload))
        else:
            rt.sync.invoke(payload)
    assert time.monotonic() - started < limit
    # the other rank was left in an all-reduce: the next request runs on a rebuilt group
    started = time.monotonic()
    assert rt.sync.invoke({"op": "allreduce"}, timeout=60) == {"sum": 3}
    assert time.monotonic() - started < 30
    assert rt.runner.pids != pids_before
    assert rt.runner.ready
    return info.value


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_rank1_raising_before_a_collective(rt: LiveRunner, stream: bool) -> None:
    error = _raise_then_recover(rt, 1, stream=stream, limit=30.0 + 5)
    assert error.rank == 1
    assert error.remote_type == "ValueError"
    assert error.remote_message == "bad input on 1"
    assert "Traceback (most recent call last)" in error.remote_traceback
    assert "_misbehave" in error.remote_traceback and "ValueError: bad input on 1" in error.remote_traceback
    assert "rank 1" in str(error) and "Remote traceback" in str(error)


def test_collective_timing_out_before_error_grace_still_rebuilds_the_group() -> None:
    # error_grace longer than the collective timeout: rank 0's all-reduce times out and
    # reports an error of its own, so every rank answered. The group is poisoned anyway.
    with live(error_grace=60.0, collective_timeout=COLLECTIVE_TIMEOUT) as rt:
        error = _raise_then_recover(rt, 1, stream=False, limit=COLLECTIVE_TIMEOUT + 5)
        assert error.rank == 1 and error.remote_type == "ValueError"
        # and it keeps working
        assert rt.sync.invoke({"op": "allreduce"}) == {"sum": 3}
