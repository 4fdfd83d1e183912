"""The ``/stream`` event sequence, framed with FastAPI's own SSE support (``fastapi.sse``).

One request streams, in order::

    event: queued     data: {"request_id": 7, "position": 0}
    event: progress   data: {"step": 5, "total_steps": 20, "progress": 0.25, "preview_image": "data:image/png;base64,..."}
    ...               (one per streamed item)
    event: result     data: {the same JSON object POST /generate returns}

``position`` is how many requests were waiting ahead of this one when it was queued
(0: it runs next). Or, when the request fails after it was queued, ``queued``, maybe some ``progress``,
then one ``event: error`` with ``data: {"type", "message", "status", ...}`` (see
:func:`gridgen.server.errors.error_body`). Framing (``event:``/``data:`` lines, blank line,
``: ping`` keep-alive comments) is ``fastapi.sse``'s.

Why not FastAPI's generator endpoints (``response_class=EventSourceResponse`` with
``yield``): their response starts before the first item, so a full queue could no longer
be a ``503`` with ``Retry-After``, and their keep-alive interval is one global constant.
So ``/stream`` submits first, then returns :func:`event_stream` bytes in FastAPI's
``EventSourceResponse``, framed by its ``format_sse_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi.sse import KEEPALIVE_COMMENT, ServerSentEvent, format_sse_event

from .._json import to_jsonable
from .._requests import StreamResult
from ..runner import RequestHandle

__all__ = ["event_stream", "request_events"]

logger = logging.getLogger("gridgen.server")



def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


async def _items_then_result(
    handle: RequestHandle, idle_timeout: float | None
) -> AsyncIterator[tuple[bool, Any]]:
    """``(is_result, value)`` for each streamed item, then ``(True, result)``."""
    async for event in handle.updates(idle_timeout=idle_timeout):
        yield isinstance(event, StreamResult), event.value


async def request_events(
    handle: RequestHandle,
    *,
    position: int | None,
    convert_result: Callable[[Any], Any],
    error_body: Callable[[BaseException], tuple[int, dict[str, Any]]],
    idle_timeout: float | None = None,
    on_finish: Callable[[bool], None] | None = None,
) -> AsyncGenerator[ServerSentEvent, None]:
    """The events of one submitted streaming request (see the module docstring).

    Leaving early (the client went away: :func:`event_stream` closes this generator)
    cancels the request on every rank.
    """
    ok = False
    try:
        yield ServerSentEvent(
            event="queued",
            raw_data=_json({"request_id": handle.id, "position": position}),
        )
        try:
            async for is_result, value in _items_then_result(handle, idle_timeout):
                if is_result:
                    yield ServerSentEvent(event="result", raw_data=_json(convert_result(value)))
                    ok = True
                else:
                    yield ServerSentEvent(event="progress", raw_data=_json(to_jsonable(value)))
        except Exception as exc:
            status, body = error_body(exc)
            if status >= 500 and status != 503:
                logger.error("stream of request %d failed: %s", handle.id, exc)
            yield ServerSentEvent(event="error", raw_data=_json(body))
    finally:
        if not handle.done():
            logger.info("request %d: the stream ended early (client gone?); cancelling", handle.id)
            handle.cancel()
        if on_finish is not None:
            on_finish(ok)


async def event_stream(events: AsyncGenerator[ServerSentEvent, None], ping: float) -> AsyncIterator[bytes]:
    """``events`` as ``text/event-stream`` bytes, with a keep-alive comment after each
    ``ping`` seconds without an event (0: none); closing this closes ``events``.

    Waiting for the next event in a task of its own lets a ping go out without
    cancelling the generator mid-step.
    """
    pending: asyncio.Future[ServerSentEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=ping if ping > 0 else None)
            if not done:
                yield KEEPALIVE_COMMENT
                continue
            future, pending = pending, None
            try:
                event = future.result()
            except StopAsyncIteration:
                return
            yield format_sse_event(data_str=event.raw_data, event=event.event)
    finally:
        if pending is not None:
            pending.cancel()  # raises CancelledError inside ``events``: its finally runs
            with contextlib.suppress(BaseException):
                await pending
        await events.aclose()
