"""The ``/stream`` event sequence, as sse-starlette ``ServerSentEvent`` objects.

One request streams, in order::

    event: queued     data: {"request_id": 7, "position": 0}
    event: progress   data: {"step": 5, "total_steps": 20, "progress": 0.25, "preview_image": "data:image/png;base64,..."}
    ...               (one per streamed item)
    event: result     data: {the same JSON object POST /generate returns}

``position`` is how many requests were waiting ahead of this one when it was queued
(0: it runs next). Or, when the request fails after it was queued, ``queued``, maybe some ``progress``,
then one ``event: error`` with ``data: {"type", "message", "status", ...}`` (see
:func:`gridgen.server.app.error_body`). Framing (``event:``/``data:`` lines, blank line,
keep-alive comments) is sse-starlette's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from .._json import to_jsonable
from .._requests import StreamResult
from ..runner import RequestHandle

__all__ = ["request_events"]

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
) -> AsyncIterator[ServerSentEvent]:
    """The events of one submitted streaming request (see the module docstring).

    Leaving early (the client went away: sse-starlette cancels this generator)
    cancels the request on every rank.
    """
    ok = False
    try:
        yield ServerSentEvent(
            event="queued",
            data=_json({"request_id": handle.id, "position": position}),
        )
        try:
            async for is_result, value in _items_then_result(handle, idle_timeout):
                if is_result:
                    yield ServerSentEvent(event="result", data=_json(convert_result(value)))
                    ok = True
                else:
                    yield ServerSentEvent(event="progress", data=_json(to_jsonable(value)))
        except Exception as exc:
            status, body = error_body(exc)
            if status >= 500 and status != 503:
                logger.error("stream of request %d failed: %s", handle.id, exc)
            yield ServerSentEvent(event="error", data=_json(body))
    finally:
        if not handle.done():
            handle.cancel()
        if on_finish is not None:
            on_finish(ok)
