"""Merged requests (issue 12, runtime side) on two CPU ranks, with BatchProbeWorker.

Requests submitted in one go (no await in between) are all queued before the dispatcher
looks, so compatible ones merge. A blocker request (no key) holds the group first when a
test needs several requests queued behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gridgen import (
    DistributedRunner,
    InvalidRequestError,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    WorkerError,
)
from gridgen.testing import BatchProbeWorker

from helpers.runtime import LiveRunner, live

BLOCK = {"op": "steps", "steps": 6, "delay": 0.05}  # no "batch": runs alone through __call__


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live(BatchProbeWorker, max_batch=8, error_grace=2.0, cancel_grace=5.0) as rt:
        yield rt


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


async def _drain(handle: Any) -> list[Any]:
    return [item async for item in handle.events()]


def test_each_merged_request_gets_only_its_items_and_result(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[int], list[list[Any]]]:
        handles = [
            runner.submit({"batch": "a", "steps": steps, "message": f"m{i}"}, streaming=True)
            for i, steps in enumerate((2, 4, 3))
        ]
        return [h.id for h in handles], list(await asyncio.gather(*(_drain(h) for h in handles)))

    ids, streams = rt.run(body)
    for request_id, steps, message, stream in zip(ids, (2, 4, 3), ("m0", "m1", "m2"), streams, strict=True):
        *items, result = stream
        assert items == [{"step": n, "request_id": request_id} for n in range(1, steps + 1)]
        assert result["request_id"] == request_id and result["message"] == message
        assert result["batch"] == ids  # all three shared one call
        assert result["completed"] == steps


def test_cancelling_one_request_of_a_batch_leaves_the_others_running(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[Any], Any, list[int | None]]:
        pids = runner.pids
        first, second, third = (
            runner.submit({"batch": "c", "steps": 30, "delay": 0.02, "message": i}, streaming=True)
            for i in range(3)
        )
        events = second.events()
        await events.__anext__()  # the batch is running
        second.cancel()
        await events.aclose()
        results = [await first.result(), await third.result()]
        with pytest.raises(RequestCancelled) as info:
            await second.result()
        return results, info.value, [*pids, *runner.pids]

    (first, third), error, pids = rt.run(body)
    assert error.request_id is not None
    assert first["completed"] == third["completed"] == 30  # the others ran to the end
    assert first["cancelled"][1] is True and first["cancelled"][0] is False  # seen by every rank
    assert pids[:2] == pids[2:]  # no rebuild of the group


def test_a_worker_error_fails_every_request_of_the_batch_then_the_runner_goes_on(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[BaseException], Any]:
        handles = [
            runner.submit({"batch": "e", "message": "fine"}),
            runner.submit({"batch": "e", "op": "raise", "on_rank": 1}),
        ]
        errors = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        return list(errors), await runner.invoke({"batch": "e", "message": "after"})

    errors, after = rt.run(body)
    for error in errors:
        assert isinstance(error, WorkerError) and error.rank == 1 and error.remote_type == "ValueError"
    assert [error.request_id for error in errors] == sorted({e.request_id for e in errors})  # each its own id
    assert after["message"] == "after"


def test_mixed_keys_are_not_merged_and_fifo_holds_across_keys(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[int], list[Any]]:
        blocker = runner.submit(BLOCK)
        while runner._current is None:
            await asyncio.sleep(0.005)
        handles = [runner.submit({"batch": key, "steps": 1}) for key in ("x", "y", "x", "y", "z")]
        done_order: list[int] = []

        async def result(handle: Any) -> Any:
            value = await handle.result()
            done_order.append(handle.id)
            return value

        await blocker.result()
        return done_order, list(await asyncio.gather(*(result(h) for h in handles)))

    order, (x1, y1, x2, y2, z1) = rt.run(body)
    assert x1["batch"] == x2["batch"] == [x1["request_id"], x2["request_id"]]
    assert y1["batch"] == y2["batch"] == [y1["request_id"], y2["request_id"]]
    assert z1["batch"] == [z1["request_id"]]
    # the oldest waiting request leads each call: x's call, then y's, then z's
    assert order == [x1["request_id"], x2["request_id"], y1["request_id"], y2["request_id"], z1["request_id"]]


def test_the_queue_bound_counts_every_queued_request() -> None:
    with live(BatchProbeWorker, max_queue=3, max_batch=8) as rt:

        async def body(runner: DistributedRunner[Any]) -> tuple[int, list[Any]]:
            blocker = runner.submit(BLOCK)
            while runner._current is None:
                await asyncio.sleep(0.005)
            queued = [runner.submit({"batch": "q"}) for _ in range(3)]  # would all merge
            with pytest.raises(QueueFull):
                runner.submit({"batch": "q"})
            size = runner.queue_size
            await blocker.result()
            return size, [await h.result() for h in queued]

        size, results = rt.run(body)
        assert size == 3
        assert all(r["batch"] == [q["request_id"] for q in results] for r in results)


def test_caps_in_requests_and_units() -> None:
    with live(BatchProbeWorker, max_batch=2, max_batch_units=5) as rt:

        async def body(runner: DistributedRunner[Any]) -> list[Any]:
            blocker = runner.submit(BLOCK)
            while runner._current is None:
                await asyncio.sleep(0.005)
            payloads = [{"batch": "u", "units": u} for u in (1, 1, 1, 3, 3, 9)]
            handles = [runner.submit(p) for p in payloads]
            await blocker.result()
            return [(await h.result())["batch"] for h in handles]

        batches = rt.run(body)
        sizes = [len(b) for b in dict.fromkeys(tuple(b) for b in batches)]
        # max_batch=2: [1,1] [1,3] (units 4 <= 5) [3] (3+9 > 5) [9] (the head always runs, even over the cap)
        assert sizes == [2, 2, 1, 1]


def test_a_worker_without_batching_is_unchanged() -> None:
    with live(max_batch=8) as rt:  # ProbeWorker declares no key

        async def body(runner: DistributedRunner[Any]) -> tuple[int, list[Any]]:
            before = await runner.invoke({"op": "calls"})
            results = await asyncio.gather(*(runner.invoke({"op": "echo", "message": i}) for i in range(3)))
            return await runner.invoke({"op": "calls"}) - before - 1, list(results)

        calls, results = rt.run(body)
        assert calls == 3  # one __call__ per request
        assert [r["echo"] for r in results] == [0, 1, 2]


def test_a_requests_timeout_applies_only_to_it(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[Any, BaseException]:
        patient = runner.submit({"batch": "t", "steps": 25, "delay": 0.02})
        hasty = runner.submit({"batch": "t", "steps": 25, "delay": 0.02}, timeout=0.2)
        with pytest.raises(RequestTimeout) as info:
            await hasty.result()
        return await patient.result(), info.value

    patient, error = rt.run(body)
    assert patient["completed"] == 25 and len(patient["batch"]) == 2
    assert error.request_id == patient["batch"][1]  # type: ignore[attr-defined]


def test_batch_key_raising_rejects_only_that_request(rt: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[Any], int]:
        good = runner.submit({"batch": "r", "message": "good"})
        with pytest.raises(InvalidRequestError, match="reject: rejected on purpose") as info:
            runner.submit({"batch": "r", "reject": True})
        assert info.value.fields == ["reject"]
        size = runner.queue_size
        also = runner.submit({"batch": "r", "message": "also"})
        return [await good.result(), await also.result()], size

    (good, also), size = rt.run(body)
    assert size <= 1  # the rejected request was never queued
    assert good["message"] == "good" and also["message"] == "also"


def test_batch_wait_merges_requests_that_arrive_a_little_later() -> None:
    with live(BatchProbeWorker, batch_wait=0.5) as rt:

        async def body(runner: DistributedRunner[Any]) -> list[Any]:
            first = runner.submit({"batch": "w"})
            await asyncio.sleep(0.1)  # the dispatcher has taken `first` and is waiting
            second = runner.submit({"batch": "w"})
            return [await first.result(), await second.result()]

        first, second = rt.run(body)
        assert first["batch"] == second["batch"] == [first["request_id"], second["request_id"]]


def test_streaming_from_self_inside_run_batch_is_an_error_naming_the_fix() -> None:
    with live(_SelfStreamer) as rt, pytest.raises(WorkerError, match=r"item\.add_streaming_result"):
        rt.sync.invoke({"batch": "s"})


class _SelfStreamer(BatchProbeWorker):
    def run_batch(self, batch: Any) -> list[Any]:
        self.add_streaming_result("which request is this for?")
        return [None] * len(batch)
