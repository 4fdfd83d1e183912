"""Request ids: each HTTP request's ``x-request-id`` (the client's, or a generated one).

:class:`RequestIds` (ASGI middleware) gives every HTTP request an id and a
:class:`RequestContext` for as long as it is served, echoes the id in the response's
``x-request-id`` header, and the handlers pass it to the runner as the request's
``trace_id``. Error bodies carry it (``request_id``), and so does every log line written
while the request is served (:mod:`gridgen.server.logs` reads :func:`current_request_id`).

An incoming id is kept when it is 1 to 128 characters of letters, digits and
``-_.:/+=@``; anything else (too long, spaces, control characters, which could forge log
lines or headers) is replaced by a generated one (32 hex digits), as is a missing id.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestContext",
    "RequestIds",
    "current_request",
    "current_request_id",
    "note_outcome",
    "with_request_id",
]

REQUEST_ID_HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9\-_.:/+=@]{1,128}")


@dataclass
class RequestContext:
    """What is known about the HTTP request being served: its id, and how it ended when
    an error handler or the event stream said so (the metrics read it)."""

    id: str
    outcome: str | None = None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("gridgen_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the HTTP request being served by this task, if any."""
    return _current.get()


def current_request_id() -> str | None:
    """The id of the HTTP request being served by this task, if any."""
    context = _current.get()
    return None if context is None else context.id


def note_outcome(outcome: str) -> None:
    """Record how the current request ended (the first word wins)."""
    context = _current.get()
    if context is not None and context.outcome is None:
        context.outcome = outcome


def with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the current request's ``request_id`` (unchanged outside a request)."""
    request_id = current_request_id()
    return body if request_id is None else {**body, "request_id": request_id}


def _incoming(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _VALID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIds:
    """ASGI middleware: an id and a :class:`RequestContext` per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(_incoming(scope))
        scope.setdefault("state", {})["request"] = context

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = context.id
            await send(message)

        token = _current.set(context)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
