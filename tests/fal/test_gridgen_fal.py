"""``gridgen.fal``: fal's remaining semantics for code that depends on them, on two CPU ranks.

Errors are returned (``{"error": message}``) instead of raised; only rank 0's streamed
items reach the caller; the base worker's ``__call__`` returns ``{}``; ``DistributedRunner()``
defaults to the base worker and one rank.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import gridgen
from gridgen import fal

from helpers.fal_workers import FalWorker
from helpers.runtime import LiveRunner


@pytest.fixture(scope="module")
def rt() -> Iterator[LiveRunner]:
    runner = fal.DistributedRunner(worker_cls=FalWorker, world_size=2, device="cpu", error_grace=2.0)
    with LiveRunner(runner) as live_runner:
        yield live_runner


def collect(rt: LiveRunner, payload: dict[str, Any], **kwargs: Any) -> list[Any]:
    async def body(runner: Any) -> list[Any]:
        return [item async for item in runner.stream(payload, **kwargs)]

    return rt.run(body)


def test_the_classes_are_gridgens_own_underneath() -> None:
    assert issubclass(fal.DistributedRunner, gridgen.DistributedRunner)
    assert issubclass(fal.DistributedWorker, gridgen.DistributedWorker)
    assert fal.__all__ == ["DistributedRunner", "DistributedWorker"]


@pytest.mark.parametrize("rank", [0, 1])
def test_invoke_returns_the_error_instead_of_raising(rt: LiveRunner, rank: int) -> None:
    result = rt.sync.invoke({"op": "items_then_raise", "on_rank": rank, "message": "bad lora path"})
    assert result == {"error": "bad lora path"}
    assert rt.sync.invoke({"op": "value", "value": {"ok": 1}}) == {"ok": 1}


def test_a_failing_stream_ends_with_an_error_item(rt: LiveRunner) -> None:
    items = collect(rt, {"op": "items_then_raise", "items": 2, "on_rank": 1, "message": "nan loss"})
    assert items == [{"step": 1}, {"step": 2}, {"error": "nan loss"}]


def test_a_failing_text_event_stream_ends_with_an_error_event(rt: LiveRunner) -> None:
    events = collect(rt, {"op": "items_then_raise", "items": 1, "on_rank": 0, "message": "nan loss"}, as_text_events=True)
    assert events == [b'data: {"step":1}\n\n', b'data: {"error":"nan loss"}\n\n']


def test_a_text_event_stream_ends_with_an_error_event_for_any_gridgen_error(rt: LiveRunner) -> None:
    async def body(runner: Any) -> list[bytes]:
        # a time limit is raised by invoke and a plain stream, but ends a text-event stream
        return [e async for e in runner.stream({"op": "sleep", "items": 1, "delay": 1.0}, 0.2, None, True)]

    events = rt.run(body)
    assert len(events) == 1 and events[0].startswith(b'data: {"error":"request ')
    assert b"time limit" in events[0] and events[0].endswith(b'"}\n\n')


def test_a_time_limit_still_raises_from_invoke(rt: LiveRunner) -> None:
    async def body(runner: Any) -> Any:
        return await runner.invoke({"op": "sleep", "items": 1, "delay": 1.0}, 0.2)

    with pytest.raises(gridgen.RequestTimeout):
        rt.run(body)


def test_a_dead_worker_is_returned_as_an_error_too() -> None:
    from gridgen.testing import ProbeWorker

    async def body() -> Any:
        runner = fal.DistributedRunner(worker_cls=ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        try:
            return await runner.invoke({"op": "kill", "on_rank": 1})
        finally:
            await runner.stop()

    result = asyncio.run(body())
    assert set(result) == {"error"} and "rank 1" in result["error"]


def test_only_rank_0s_items_reach_the_caller(rt: LiveRunner) -> None:
    items = collect(rt, {"op": "items", "items": 3})  # every rank streams 3 items
    assert items == [{"i": 0, "rank": 0}, {"i": 1, "rank": 0}, {"i": 2, "rank": 0}, {"rank": 0}]


def test_add_streaming_error_is_an_error_item_in_fals_shape(rt: LiveRunner) -> None:
    items = collect(rt, {"op": "stream_error"})
    assert items == [{"n": 1}, {"error": "frame 2 could not be decoded"}, {"n": 3}, {"done": True}]


def test_the_base_worker_returns_an_empty_dict() -> None:
    worker = fal.DistributedWorker()
    assert worker() == {}
    assert worker(streaming=True, prompt="x") == {}


def test_runner_defaults_to_the_base_worker_and_one_rank() -> None:
    async def body() -> Any:
        runner = fal.DistributedRunner(device="cpu")
        assert runner.worker_cls is fal.DistributedWorker and runner.world_size == 1
        async with runner:
            return await runner.invoke(), [item async for item in runner.stream({"a": 1})]

    result, items = asyncio.run(body())
    assert result == {} and items == [{}]


def test_the_fal_runner_still_raises_for_misuse() -> None:
    async def body() -> None:
        runner = fal.DistributedRunner(device="cpu")
        await runner.invoke({})  # not started: a programming error, raised as in fal

    with pytest.raises(gridgen.RunnerClosed):
        asyncio.run(body())
