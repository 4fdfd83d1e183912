"""Waiting for a result while watching the client: a request whose client went away is
cancelled on every rank (shared by ``/generate`` and the OpenAI-compatible routes)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from starlette.types import Message

from ..runner import RequestHandle

__all__ = ["CLIENT_CLOSED_REQUEST", "result_unless_disconnected"]

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; nobody reads it


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body was read already)."""
    while True:
        message: Message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def result_unless_disconnected(request: Request, handle: RequestHandle) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, None)`` once the client is gone (the request is cancelled)."""
    result = asyncio.ensure_future(handle.result())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()  # handle.result() cancels the request on every rank
    if result.done() and not result.cancelled():
        return True, result.result()
    return False, None
