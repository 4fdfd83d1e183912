"""Errors of the OpenAI-compatible routes in OpenAI's shape, with the statuses its SDKs map.

Body: ``{"error": {"message", "type", "param", "code"}}``. Statuses and what the official
``openai`` Python package raises for them:

======================================  ======  ========================  ==========================
cause                                   status  ``type`` / ``code``       SDK exception
======================================  ======  ========================  ==========================
a parameter breaks a rule               400     invalid_request_error /   ``BadRequestError``
                                                the rule                  (``param`` names it)
missing or wrong API key                401     invalid_request_error /   ``AuthenticationError``
                                                invalid_api_key
unknown ``model``, unknown image URL    404     invalid_request_error /   ``NotFoundError``
                                                model_not_found ...
body over the server's limit            413     invalid_request_error /   ``APIStatusError``
                                                payload_too_large
the queue is full                       429     rate_limit_error /        ``RateLimitError``
                                                queue_full, Retry-After   (retried by the SDK)
not ready (starting, restarting)        503     service_unavailable_error ``InternalServerError``
                                                Retry-After               (retried by the SDK)
a worker failed                         500     server_error              ``InternalServerError``
the request's time limit passed         504     server_error / timeout    ``InternalServerError``
======================================  ======  ========================  ==========================

A full queue is a ``429`` here (OpenAI's own "overloaded" answer) and a ``503`` on
gridgen's ``/generate``; both carry ``Retry-After``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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

__all__ = ["OpenAIError", "openai_error_body", "openai_error_response"]

logger = logging.getLogger("gridgen.server")


class OpenAIError(Exception):
    """An error the OpenAI routes answer as is: ``status``, ``message``, ``param``, ``code``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def openai_error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and ``{"error": {...}}`` body for ``exc`` (see the module docstring)."""
    status, kind, param, code = 500, "server_error", None, None
    message = str(exc)
    if isinstance(exc, OpenAIError):
        status, kind, param, code, message = exc.status, exc.type, exc.param, exc.code, exc.message
    elif isinstance(exc, InvalidRequestError):
        status, kind = 400, "invalid_request_error"
        first = exc.errors[0] if exc.errors else None
        param = _param(str(first.field)) if first is not None else None
        code = str(getattr(first, "rule", "")) or None
        message = "; ".join(f"{e.field}: {e.message}" for e in exc.errors) or message
    elif isinstance(exc, WorkerError):
        message = exc.args[0] if exc.args else exc.remote_message  # the traceback stays in the log
    elif isinstance(exc, WorkerDiedError):
        code = "worker_died"
    elif isinstance(exc, QueueFull):
        status, kind, code = 429, "rate_limit_error", "queue_full"
        message = f"the server is busy: {exc} Retry after the time in the Retry-After header."
    elif isinstance(exc, (RunnerClosed, RequestCancelled)):
        status, kind, code = 503, "service_unavailable_error", "not_ready"
    elif isinstance(exc, RequestTimeout):
        status, code = 504, "timeout"
    elif isinstance(exc, HTTPException) and exc.status_code == 413:  # a body counted over the limit
        status, kind, code, message = 413, "invalid_request_error", "payload_too_large", "the request body is too large"
    elif isinstance(exc, PayloadTooLarge):
        status, kind, code = 413, "invalid_request_error", "payload_too_large"
    elif not isinstance(exc, GridgenError):
        message = "internal server error (the server log has the traceback)"
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error_response(exc: BaseException, retry_after: int) -> JSONResponse:
    """The JSON response for ``exc``; ``Retry-After`` on 429 and 503."""
    status, body = openai_error_body(exc)
    if status >= 500 and status != 503:
        logger.error("OpenAI route failed: %s", exc)
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _param(field: str) -> str:
    """gridgen's field names as the OpenAI parameter a client sent (``num_images`` is ``n``)."""
    return {"num_images": "n", "width": "size", "height": "size", "image_format": "output_format"}.get(
        field, field
    )
