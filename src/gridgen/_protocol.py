"""The control protocol between the host and its workers: message kinds, frames, error info.

The one place that packs and parses every frame. Topology: the host binds one ROUTER
socket at ``ipc://<private dir>/control`` (the directory is created with mode 0700 and
removed at stop); each worker connects one DEALER whose routing id names its
generation and rank (:func:`routing_id`).

Frames, every body encoded with :mod:`gridgen._codec` (never pickle):

* host -> worker: ``[body]`` where body is ``[kind, request_id, data]``.
* worker -> host: ``[session_key, body]``; the host drops (with a log line) any
  message whose first frame is not the runner's 32-byte session key, any message
  from an unknown routing id, and any body that does not parse.

Kinds host -> worker: ``call`` (data ``[streaming, payload]``), ``batch`` (merged
requests: data is the list of their ``call`` frames, each as encoded at submit; the
request id is the first one's), ``cancel``, ``shutdown``. Kinds worker -> host: ``hello`` (data ``{"pid": int}``), ``ready``
(data ``{"batch_sizes": [int, ...] | None}``: the worker's declared batch sizes),
``setup_error`` (error info), ``item`` (a streamed item), ``released`` (the rank is
free for the next request; its value follows: ``__call__`` returned a
``concurrent.futures.Future``), ``done`` (rank 0: the return value; other ranks:
None), ``error`` (error info), ``cancelled``.

Error info is ``{"type", "message", "traceback", "in_collective", "invalid_request"}``:
``in_collective`` is set *by the worker*, which holds the real exception object, when
the exception (or one it was raised from) escaped from a ``torch.distributed`` call;
the host then knows the ranks' collectives are out of step.
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass
from typing import Any, Final

from ._codec import decode, encode

__all__ = [
    "HOST_KINDS",
    "SESSION_KEY_BYTES",
    "WORKER_KINDS",
    "ErrorInfo",
    "Kind",
    "Message",
    "pack",
    "parse",
    "routing_id",
]

SESSION_KEY_BYTES: Final = 32


class Kind(str, enum.Enum):
    """Every message kind; the value is what travels."""

    # host -> worker
    CALL = "call"
    BATCH = "batch"
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


HOST_KINDS: Final = frozenset({Kind.CALL, Kind.BATCH, Kind.CANCEL, Kind.SHUTDOWN})
WORKER_KINDS: Final = frozenset(set(Kind) - HOST_KINDS)
_BY_VALUE: Final = {kind.value: kind for kind in Kind}
_CALL_ONLY: Final = frozenset({Kind.CALL})


@dataclass(frozen=True, slots=True)
class Message:
    """One parsed message."""

    kind: Kind
    request_id: int
    data: Any = None


def routing_id(generation: int, rank: int) -> bytes:
    """The DEALER routing id of ``rank`` in group ``generation``."""
    return b"g%d-r%d" % (generation, rank)


def pack(kind: Kind, request_id: int = 0, data: Any = None, *, max_bytes: int | None = None) -> bytes:
    """One message body; raises TypeError/ValueError/PayloadTooLarge for data that cannot travel."""
    return encode([kind.value, request_id, data], max_bytes=max_bytes)


def pack_call(request_id: int, streaming: bool, payload: dict[str, Any], *, max_bytes: int | None) -> bytes:
    """A ``call`` message."""
    return encode([Kind.CALL.value, request_id, [streaming, payload]], max_bytes=max_bytes)


def parse(raw: bytes | memoryview, allowed: frozenset[Kind], *, max_bytes: int | None = None) -> Message:
    """Decode and check one body; raise ValueError (CodecError, PayloadTooLarge) when invalid."""
    body = decode(raw, max_bytes=max_bytes)
    if not isinstance(body, list) or len(body) != 3:
        raise ValueError("a message body must be a list [kind, request_id, data]")
    name, request_id, data = body
    kind = _BY_VALUE.get(name) if isinstance(name, str) else None
    if kind is None or kind not in allowed:
        raise ValueError(f"unknown message kind {name!r}")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ValueError("request_id must be an int")
    if kind is Kind.CALL and not _is_call_data(data):
        raise ValueError("call data must be [streaming: bool, payload: dict with str keys]")
    if kind is Kind.BATCH:
        data = _parse_batch(data, max_bytes)
    return Message(kind, request_id, data)


def _parse_batch(data: Any, max_bytes: int | None) -> list[Message]:
    if not isinstance(data, list) or not data or not all(isinstance(frame, bytes) for frame in data):
        raise ValueError("batch data must be a non-empty list of call frames")
    calls = [parse(frame, _CALL_ONLY, max_bytes=max_bytes) for frame in data]
    if len({call.request_id for call in calls}) != len(calls):
        raise ValueError("a batch names a request twice")
    return calls


def _is_call_data(data: Any) -> bool:
    return (
        isinstance(data, list)
        and len(data) == 2
        and isinstance(data[0], bool)
        and isinstance(data[1], dict)
        and all(isinstance(key, str) for key in data[1])
    )


@dataclass(frozen=True)
class ErrorInfo:
    """What travels for an exception raised on a rank."""

    type: str
    message: str
    traceback: str = ""
    in_collective: bool = False
    invalid_request: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Describe ``exc``; decide here, with the real objects, whether a collective failed."""
        from .errors import InvalidRequestError

        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
        return cls(
            type=name,
            message=str(exc),
            traceback="".join(traceback.format_exception(kind, exc, exc.__traceback__)),
            in_collective=failed_in_collective(exc),
            invalid_request=isinstance(exc, InvalidRequestError),
        )

    @classmethod
    def from_wire(cls, data: Any) -> ErrorInfo:
        """Read error info leniently: a malformed one still becomes an error, never a crash."""
        if not isinstance(data, dict):
            return cls(type="Exception", message=str(data))
        return cls(
            type=str(data.get("type", "Exception")),
            message=str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
            in_collective=data.get("in_collective") is True,
            invalid_request=data.get("invalid_request") is True,
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "in_collective": self.in_collective,
            "invalid_request": self.invalid_request,
        }


def failed_in_collective(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from or while handling, escaped from
    a torch.distributed call (its innermost frame is there) or is a torch.distributed error:
    that collective was aborted (timed out, peer gone), so the ranks' collectives are out of
    step and every later one fails until the group is rebuilt. Following ``__cause__`` and
    ``__context__`` recognises user code that re-raises such an error as its own type."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_dist_error(current) or _innermost_in_dist(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_dist_error(exc: BaseException) -> bool:
    import sys

    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    return isinstance(dist_error, type) and isinstance(exc, dist_error)


def _innermost_in_dist(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return "torch/distributed/" in tb.tb_frame.f_code.co_filename.replace("\\", "/")
