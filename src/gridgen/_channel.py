"""The control channel between the host and its workers: ZeroMQ sockets and framing.

Topology: the host binds one ROUTER socket at ``ipc://<private dir>/control``
(the directory is created with mode 0700 and removed at stop); each worker
connects one DEALER whose routing id names its generation and rank.

Frames, every body encoded with :mod:`gridgen._codec` (never pickle):

* host -> worker: ``[body]`` where body is ``[kind, request_id, data]``.
* worker -> host: ``[session_key, body]``; the host drops (with a log line)
  any message whose first frame is not the runner's 32-byte session key, any
  message from an unknown routing id, and any body that does not decode.

Kinds host -> worker: ``call`` (data ``[streaming, payload]``), ``cancel``,
``shutdown``. Kinds worker -> host: ``hello`` (data ``{"pid": int}``),
``ready``, ``setup_error`` (data: error info), ``item`` (a streamed item),
``released`` (the rank is free for the next request, its return value comes later:
``__call__`` returned a ``concurrent.futures.Future``), ``done`` (rank 0: the
return value; other ranks: None), ``error`` (error info), ``cancelled``.
Error info is ``{"type", "message", "traceback"}``.
"""

from __future__ import annotations

import traceback
from typing import Any

# host -> worker
CALL = "call"
CANCEL = "cancel"
SHUTDOWN = "shutdown"

# worker -> host
HELLO = "hello"
READY = "ready"
SETUP_ERROR = "setup_error"
ITEM = "item"
DONE = "done"
ERROR = "error"
CANCELLED = "cancelled"
RELEASED = "released"

WORKER_KINDS = frozenset({HELLO, READY, SETUP_ERROR, ITEM, DONE, ERROR, CANCELLED, RELEASED})
HOST_KINDS = frozenset({CALL, CANCEL, SHUTDOWN})

SESSION_KEY_BYTES = 32


def routing_id(generation: int, rank: int) -> bytes:
    """The DEALER routing id of ``rank`` in group ``generation``."""
    return b"g%d-r%d" % (generation, rank)


def error_info(exc: BaseException) -> dict[str, str]:
    """What travels for an exception: its type name, message and formatted traceback."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    return {
        "type": name,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(cls, exc, exc.__traceback__)),
    }


def parse_body(body: Any, kinds: frozenset[str]) -> tuple[str, int, Any]:
    """Check the shape of a decoded body; raise ValueError when it is not a valid message."""
    if not isinstance(body, list) or len(body) != 3:
        raise ValueError("a message body must be a list [kind, request_id, data]")
    kind, request_id, data = body
    if kind not in kinds:
        raise ValueError(f"unknown message kind {kind!r}")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ValueError("request_id must be an int")
    return kind, request_id, data
