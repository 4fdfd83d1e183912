"""How errors reach HTTP clients: gridgen's error body and status for each exception
(the table in :mod:`gridgen.server.app`), the 413 body limit, 422 bodies with long inputs
cut, and ``Retry-After`` on a 503."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from .._stats import outcome_of
from ..errors import (
    GridgenError,
    InvalidRequestError,
    PayloadTooLarge,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    WorkerDiedError,
    WorkerError,
)
from .openai_errors import openai_error_response
from .request_ids import current_request_id, note_outcome, with_request_id

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Pace",
    "add_error_handling",
    "error_body",
    "error_response",
    "traced_error_body",
]

logger = logging.getLogger("gridgen.server")

DEFAULT_MAX_BODY_BYTES = 32 << 20
"""``create_app``'s default request body limit: 32 MiB, room for a start image and a mask
of a few megapixels each as PNG in base64 (a 2048x2048 photo is about 8 MB as PNG)."""
_ECHO_CHARS = 200  # of a rejected input, echoed back in a 422 body


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the JSON error object for an exception (see the module docstring)."""
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, WorkerError):
        body["rank"] = exc.rank
        body["remote_type"] = exc.remote_type
        # str(WorkerError) carries the remote traceback: keep that in the server log.
        body["message"] = exc.args[0] if exc.args else exc.remote_message
        status = 422 if isinstance(exc, InvalidRequestError) else 500
    elif isinstance(exc, InvalidRequestError):
        status = 422
        # Found on the host after the body parsed (an unknown LoRA adapter, say): each rule too.
        body["errors"] = [{"field": e.field, "rule": e.rule, "message": e.message} for e in exc.errors]
    elif isinstance(exc, WorkerDiedError):
        body.update(rank=exc.rank, exitcode=exc.exitcode, signal=exc.signal)
        status = 500
    elif isinstance(exc, (QueueFull, RunnerClosed, RequestCancelled)):
        status = 503
    elif isinstance(exc, RequestTimeout):
        status = 504
    elif isinstance(exc, PayloadTooLarge):
        status = 413
    elif isinstance(exc, GridgenError):
        status = 500
    else:
        body["message"] = "internal server error (the server log has the traceback)"
        status = 500
    body["status"] = status
    return status, body


class Pace:
    """How long one request keeps the workers busy (a running mean): what ``Retry-After`` says
    when the service is full, since a full queue frees one slot each time a request ends.

    Requests run one at a time in FIFO order, so request ``i`` started at
    ``max(its arrival, the previous request's end)``; that start, not the arrival, is what
    a request's service time counts from.
    """

    def __init__(self) -> None:
        self.mean: float | None = None
        self._last_end = 0.0

    def record(self, arrived: float, ended: float, ok: bool) -> None:
        service = ended - max(arrived, self._last_end)
        self._last_end = max(self._last_end, ended)
        if ok and service >= 0:
            self.mean = service if self.mean is None else 0.7 * self.mean + 0.3 * service

    def retry_after(self) -> int:
        return 1 if self.mean is None else max(1, min(600, math.ceil(self.mean)))


def traced_error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """:func:`error_body` with the HTTP request's ``request_id``; notes the outcome for the metrics."""
    status, body = error_body(exc)
    note_outcome(outcome_of(exc) if status != 413 else "too_large")
    return status, with_request_id(body)


def error_response(exc: BaseException, pace: Pace) -> JSONResponse:
    """gridgen's error body for ``exc`` (with the ``request_id``); a 503 says when to retry."""
    status, body = traced_error_body(exc)
    headers = {"Retry-After": str(pace.retry_after())} if status == 503 else None
    content = with_request_id({"detail": body["message"], "error": body})
    return JSONResponse(content, status_code=status, headers=headers)


def _with_request_id(response: Response) -> Response:
    """A JSON error response of FastAPI's own with the ``request_id`` added."""
    if not isinstance(response, JSONResponse) or current_request_id() is None:
        return response
    content = json.loads(bytes(response.body))
    if isinstance(content, dict):
        content = with_request_id(content)
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(content, status_code=response.status_code, headers=headers)


def add_error_handling(app: FastAPI, pace: Pace, max_body_bytes: int | None) -> None:
    """Exception handlers for gridgen errors, 413s and invalid bodies; the body limit middleware."""

    def reply(exc: BaseException, path: str = "") -> JSONResponse:
        if path.startswith("/v1/"):  # the OpenAI-compatible routes answer in OpenAI's shape
            return openai_error_response(exc, pace.retry_after())
        return error_response(exc, pace)

    @app.exception_handler(GridgenError)
    async def on_gridgen_error(request: Request, exc: GridgenError) -> JSONResponse:
        status, _ = error_body(exc)
        if status >= 500 and status != 503:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return reply(exc)

    if max_body_bytes is not None:
        app.add_middleware(_BodyLimit, max_bytes=max_body_bytes, reply=reply)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 413:  # from _BodyLimit, counting a body sent without a length
            return reply(
                PayloadTooLarge(f"the request body is larger than {max_body_bytes} bytes (max_body_bytes)"),
                request.url.path,
            )
        return _with_request_id(await http_exception_handler(request, exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI echoes each rejected input: a 50 MB prompt would come back as a 50 MB body.
        errors = [_plain_error(e) for e in exc.errors()]
        note_outcome("invalid")
        return _with_request_id(await request_validation_exception_handler(request, RequestValidationError(errors)))


def _plain_error(error: Any) -> Any:
    """One pydantic error for the client: its input clipped, and no exception objects in
    its ``ctx`` (a validator's ``ValueError`` reaches JSON as ``{}``; its text is the ``msg``)."""
    out = dict(error)
    if "input" in out:
        out["input"] = _clip(out["input"])
    ctx = {k: v for k, v in out.pop("ctx", {}).items() if not isinstance(v, BaseException)}
    if ctx:
        out["ctx"] = ctx
    return out


class _BodyLimit:
    """413 for a request body over ``max_bytes``, in gridgen's error shape.

    A declared ``Content-Length`` over the limit is answered before reading anything; a
    body without one is counted as it arrives. (FastAPI's own ``max_body_size`` does the
    same but answers a declared length in plain text from outside the app's handlers.)
    """

    def __init__(self, app: Any, max_bytes: int, reply: Callable[[BaseException, str], Response]) -> None:
        self.app, self.max_bytes, self.reply = app, max_bytes, reply

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(f"the request body is larger than {self.max_bytes} bytes (max_body_bytes)")
            await self.reply(error, scope["path"])(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message: Message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # FastAPI lets an HTTPException raised while reading the body reach the handlers.
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)


def _clip(value: Any, depth: int = 0) -> Any:
    """``value`` with long strings cut and big containers summarised, for echoing back."""
    if isinstance(value, str):
        if len(value) <= _ECHO_CHARS:
            return value
        return f"{value[:_ECHO_CHARS]}... ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return _clip(bytes(value).decode("utf-8", "replace"), depth)
    if isinstance(value, Mapping):
        if depth >= 2 or len(value) > 32:
            return f"(an object with {len(value)} keys)"
        return {str(k): _clip(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if depth >= 2 or len(value) > 32:
            return f"(an array of {len(value)} items)"
        return [_clip(v, depth + 1) for v in value]
    return value
