"""The request state machine, the queue and the handle, with no process and no socket.

The dispatcher's part is played by hand: each test reports what ranks would say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from gridgen import (
    QueueFull,
    RequestCancelled,
    RequestError,
    RequestState,
    RequestTimeout,
    StreamItem,
    StreamResult,
    WorkerError,
)
from gridgen._options import RunnerOptions, normalize_payload
from gridgen._requests import Request, RequestHandle, RequestQueue

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), 5))  # type: ignore[arg-type]


def make(request_id: int = 1, *, streaming: bool = False, world_size: int = 2, buffer: int = 8,
         deadline: float | None = None) -> Request:
    return Request(request_id, b"frame", streaming=streaming, deadline=deadline, buffer=buffer,
                   world_size=world_size, loop=asyncio.get_running_loop())


def error_from(rank: int, request_id: int = 1) -> WorkerError:
    return WorkerError.from_remote(rank, {"type": "ValueError", "message": "boom"}, request_id=request_id)


def test_done_once_every_rank_reported_with_rank_0s_value() -> None:
    async def body() -> None:
        request = make()
        request.start()
        request.report_done(1, "ignored")
        assert not request.finished and request.state is RequestState.RUNNING
        assert not request.ranks_free
        request.report_done(0, {"value": 0})
        assert request.future.result() == {"value": 0}
        assert request.state is RequestState.DONE and request.state == "done"
        assert request.ranks_free

    run(body)


def test_first_error_wins_and_the_state_is_failed() -> None:
    async def body() -> None:
        request = make()
        request.start()
        first = error_from(1)
        assert request.report_error(1, first, in_collective=False, now=1.0) is True
        assert request.first_error_at == 1.0
        assert request.report_error(0, error_from(0), in_collective=True, now=2.0) is False
        assert request.collective_failed  # a later rank's flag still poisons the group
        assert request.future.exception() is first
        assert request.state is RequestState.FAILED

    run(body)


def test_a_duplicate_report_from_a_rank_is_ignored() -> None:
    async def body() -> None:
        request = make()
        request.start()
        request.report_done(1, None)
        request.report_done(1, None)
        assert request.reported == {1}
        assert not request.finished

    run(body)


def test_released_ranks_free_the_group_before_the_value_arrives() -> None:
    async def body() -> None:
        request = make()
        request.start()
        request.report_released(0)
        request.report_released(1)
        assert request.ranks_free and not request.finished
        assert request.state is RequestState.RUNNING  # not "done" while done() is false
        request.report_done(1, None)
        request.report_done(0, 42)
        assert request.future.result() == 42 and request.state == "done"

    run(body)


def test_cancelled_verdict_when_ranks_stop_after_a_cancel() -> None:
    async def body() -> None:
        request = make(7)
        request.start()
        assert request.mark_cancel_sent(3.0) is True
        assert request.mark_cancel_sent(4.0) is False
        request.report_cancelled(0)
        request.report_done(1, None)
        error = request.future.exception()
        assert isinstance(error, RequestCancelled) and error.request_id == 7
        assert request.state is RequestState.CANCELLED

    run(body)


def test_finish_sets_the_request_id_on_request_errors() -> None:
    async def body() -> None:
        request = make(9)
        request.finish(error=RequestTimeout("late"))
        error = request.future.exception()
        assert isinstance(error, RequestError) and error.request_id == 9
        assert request.state is RequestState.CANCELLED
        request.finish(result="too late")  # the first outcome wins
        assert request.future.exception() is error

    run(body)


def test_start_twice_is_an_error() -> None:
    async def body() -> None:
        request = make()
        request.start()
        with pytest.raises(RuntimeError, match="running"):
            request.start()

    run(body)


def test_items_are_kept_only_while_streaming_and_the_oldest_are_dropped() -> None:
    async def body() -> None:
        quiet = make(streaming=False)
        quiet.push("x")
        assert not quiet.items
        request = make(streaming=True, buffer=2)
        for i in range(5):
            request.push(i)
        assert list(request.items) == [3, 4] and request.dropped == 3
        request.finish(result=None)
        request.push("after the end")
        assert list(request.items) == [3, 4]

    run(body)


def test_queue_is_fifo_bounded_and_reports_positions() -> None:
    async def body() -> None:
        queue = RequestQueue(max_queue=2)
        a, b = make(1), make(2)
        queue.put(a)
        queue.put(b)
        assert [queue.position(a), queue.position(b)] == [0, 1]
        with pytest.raises(QueueFull, match="max_queue=2"):
            queue.check_room(group_busy=True)
        assert queue.remove(a) and not queue.remove(a)
        assert queue.position(b) == 0
        assert queue.pop() is b and queue.pop() is None

    run(body)


def test_max_queue_zero_takes_one_request_only_when_idle() -> None:
    queue = RequestQueue(max_queue=0)
    queue.check_room(group_busy=False)
    with pytest.raises(QueueFull):
        queue.check_room(group_busy=True)


def test_handle_cancel_goes_to_the_canceller_and_position_to_the_queue() -> None:
    async def body() -> None:
        queue = RequestQueue(max_queue=4)
        request = make(5)
        queue.put(request)
        calls: list[tuple[Request, BaseException]] = []
        handle = RequestHandle(request, queue, lambda r, e: calls.append((r, e)))
        assert handle.position == 0 and handle.status == "queued"
        handle.cancel()
        assert calls[0][0] is request
        assert isinstance(calls[0][1], RequestCancelled) and calls[0][1].request_id == 5

    run(body)


def test_updates_are_typed_items_then_the_result() -> None:
    async def body() -> list[Any]:
        queue = RequestQueue(max_queue=4)
        request = make(streaming=True)
        request.start()
        handle = RequestHandle(request, queue, lambda r, e: r.finish(error=e))
        request.push({"step": 1})
        request.push({"step": 2})
        request.report_done(1, None)
        request.report_done(0, {"step": 2})  # a result equal to an item is still the result
        return [event async for event in handle.updates()]

    events = run(body)
    assert events == [StreamItem({"step": 1}), StreamItem({"step": 2}), StreamResult({"step": 2})]


def test_events_yield_plain_values_and_leaving_early_cancels() -> None:
    async def body() -> tuple[list[Any], list[BaseException]]:
        queue = RequestQueue(max_queue=4)
        request = make(streaming=True)
        request.start()
        cancels: list[BaseException] = []
        handle = RequestHandle(request, queue, lambda r, e: cancels.append(e))
        request.push("a")
        request.push("b")
        seen = []
        events = handle.events()
        async for value in events:
            seen.append(value)
            break
        await events.aclose()
        return seen, cancels

    seen, cancels = run(body)
    assert seen == ["a"]
    assert len(cancels) == 1 and isinstance(cancels[0], RequestCancelled)


def test_a_passed_deadline_is_a_request_timeout() -> None:
    async def body() -> BaseException:
        queue = RequestQueue(max_queue=4)
        request = make(3, deadline=asyncio.get_running_loop().time() + 0.01)
        handle = RequestHandle(request, queue, lambda r, e: r.finish(error=e))
        with pytest.raises(RequestTimeout) as info:
            await handle.result()
        return info.value

    error = run(body)
    assert error.request_id == 3  # type: ignore[attr-defined]


def test_idle_timeout_names_the_request() -> None:
    async def body() -> None:
        queue = RequestQueue(max_queue=4)
        request = make(4, streaming=True)
        request.start()
        handle = RequestHandle(request, queue, lambda r, e: r.finish(error=e))
        with pytest.raises(RequestTimeout, match="request 4: no stream item"):
            async for _ in handle.updates(idle_timeout=0.01):
                pass
        assert request.state is RequestState.CANCELLED

    run(body)


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_queue": -1}, "max_queue must be >= 0"),
        ({"stream_buffer": 0}, "stream_buffer must be >= 1"),
        ({"keepalive_payload": {"op": "x"}}, "keepalive_payload needs keepalive_interval"),
        ({"cwd": "/nonexistent/gridgen"}, "cwd must be an existing directory"),
        ({"keepalive_payload": {}, "keepalive_interval": 0}, "keepalive_interval must be > 0"),
        ({"error_grace": -1}, "error_grace must be >= 0"),
    ],
)
def test_options_are_checked_once_with_the_rule_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunnerOptions(**options)


def test_payload_normalisation_rules() -> None:
    assert normalize_payload({"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="payload must be a dict"):
        normalize_payload([1])
    with pytest.raises(TypeError, match="keys must be str"):
        normalize_payload({1: 2})
    # the runner sets streaming itself (invoke: False, stream: True), as fal does
    assert normalize_payload({"streaming": True, "a": 1}) == {"a": 1}


def test_a_keepalive_interval_alone_sends_an_empty_payload() -> None:
    assert RunnerOptions(keepalive_interval=5.0).keepalive_payload == {}
    assert RunnerOptions(keepalive_payload={"a": 1, "streaming": True}, keepalive_interval=5.0).keepalive_payload == {"a": 1}


def test_one_error_ending_several_requests_names_each() -> None:
    async def body() -> None:
        shared = RequestCancelled("the worker group was restarted")
        first, second = make(1), make(2)
        first.finish(error=shared)
        second.finish(error=shared)
        ids = [first.future.exception().request_id, second.future.exception().request_id]  # type: ignore[union-attr]
        assert ids == [1, 2]
        assert shared.request_id is None  # the shared instance is left as it was

    run(body)
