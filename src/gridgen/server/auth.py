"""API keys: ``Authorization: Bearer KEY`` on every route but the open ones.

``gridgen serve --api-key KEY`` (repeatable) or the environment variable
``GRIDGEN_API_KEY`` (several keys separated by commas) turn it on; ``create_app(...,
api_keys=[...])`` does the same for your own app. Open without a key: ``/health`` and
``/ready`` (probes of load balancers and orchestrators) and ``/``, the playground page
(which then asks for the key and sends it with each request). Everything else, the
OpenAI-compatible ``/v1/...`` routes and the image URLs they hand out included, answers
``401`` without a valid key.

Keys are compared with :func:`hmac.compare_digest` against every configured key, so the
time taken does not tell how much of a guess was right, nor which key it resembled.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["API_KEY_ENV", "OPEN_PATHS", "ApiKeyAuth", "api_keys_from", "key_matches"]

API_KEY_ENV = "GRIDGEN_API_KEY"
"""Environment variable with the service's API key(s), comma-separated."""

OPEN_PATHS = frozenset({"/health", "/ready", "/"})
"""Paths served without a key: health probes and the playground page."""


def api_keys_from(given: Iterable[str] | None, env: Mapping[str, str] | None = None) -> list[str]:
    """The keys of ``--api-key`` (``given``) and of ``GRIDGEN_API_KEY``, blank ones dropped.

    Raises:
        ValueError: a key with whitespace or a comma inside (it could never be sent back
            intact in a header).
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in given or ()]
    keys += [k.strip() for k in env.get(API_KEY_ENV, "").split(",")]
    keys = [k for k in keys if k]
    for key in keys:
        if any(ch.isspace() for ch in key) or "," in key:
            raise ValueError("an API key must not contain whitespace or commas")
    return list(dict.fromkeys(keys))


def key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Whether ``presented`` equals one of ``keys``; every key is compared, in constant time."""
    candidate = presented.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


class ApiKeyAuth:
    """ASGI middleware: a ``401`` unless the request bears one of the keys (see the module
    docstring). The 401 body is OpenAI's error shape on ``/v1/...`` and gridgen's elsewhere."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("ApiKeyAuth needs at least one key")
        self.app = app
        self.keys = [k.encode("utf-8", "surrogateescape") for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and key_matches(token.strip(), self.keys):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send the header 'Authorization: Bearer KEY'"
            if not token
            else "incorrect API key"
        )
        body = _unauthorized_body(scope["path"], message)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="gridgen"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _unauthorized_body(path: str, message: str) -> bytes:
    error: dict[str, Any]
    if path.startswith("/v1/"):
        error = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                           "code": "invalid_api_key"}}
    else:
        error = {"detail": message, "error": {"type": "AuthenticationError", "message": message, "status": 401}}
    return json.dumps(error).encode()
