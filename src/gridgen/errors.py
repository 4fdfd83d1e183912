"""Every exception gridgen raises, in one tree, grouped the way httpx groups its own.

```
GridgenError
├── RequestError               one request failed for a reason of its own; .request_id
│   ├── InvalidRequestError    a field broke a rule (also a ValueError); .errors, .fields
│   ├── QueueFull              the queue is at max_queue; nothing was queued
│   ├── RequestTimeout         the request's time limit passed (also a TimeoutError)
│   └── RequestCancelled       the runner dropped the request (stop, restart)
├── RunnerError                the runner as a whole (also a RuntimeError)
│   └── RunnerClosed           the runner is not running: new, draining, stopping or stopped
├── WorkerFailure              a worker failed; .rank
│   ├── WorkerError            a rank raised inside setup/__call__; the remote traceback; .request_id
│   │   └── StartupError       start() failed: setup raised, a rank died while starting, or timed out
│   │       └── StartupTimeout also a TimeoutError
│   └── WorkerDiedError        a worker process died (killed, segfault, OOM); .exitcode, .signal
├── PayloadTooLarge            an encoded message is over max_message_bytes (also a ValueError)
├── CodecError                 bytes that are not a valid gridgen message (also a ValueError)
├── ModelNotFoundError         a model could not be found locally or on the hub (also a FileNotFoundError)
├── LoraLoadError              raised *inside workers*: a LoRA adapter a request named could not be loaded
└── Cancelled                  raised *inside workers* by check_cancelled() when the host cancelled
```

Errors from a rank keep the remote exception's type name, message and formatted
traceback as data (``remote_type``, ``remote_message``, ``remote_traceback``):
nothing from a worker is unpickled, so the original class is never rebuilt on the
host. One exception: a worker that raises :class:`InvalidRequestError` reaches the
caller as a :class:`WorkerError` that is *also* an :class:`InvalidRequestError`, so
``except InvalidRequestError`` catches bad input wherever it was found.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Cancelled",
    "CodecError",
    "GridgenError",
    "InvalidRequestError",
    "LoraLoadError",
    "ModelNotFoundError",
    "PayloadTooLarge",
    "QueueFull",
    "RequestCancelled",
    "RequestError",
    "RequestTimeout",
    "RunnerClosed",
    "RunnerError",
    "StartupError",
    "StartupTimeout",
    "WorkerDiedError",
    "WorkerError",
    "WorkerFailure",
]


class GridgenError(Exception):
    """Base class of every error gridgen raises."""


# -- errors of one request ---------------------------------------------------------------


class RequestError(GridgenError):
    """One request failed for a reason of its own; other requests are unaffected.

    Attributes:
        request_id: the request's id (``handle.id``), or None when it never got one
            (rejected before queueing).
    """

    def __init__(self, message: str = "", *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class InvalidRequestError(RequestError, ValueError):
    """A request broke one or more rules; ``.errors`` lists them (each with ``field``,
    ``rule`` and ``message``).

    ``str()`` names every field and rule, e.g.
    ``invalid request: width: Input should be a multiple of 8 (got 100)``.
    """

    def __init__(self, errors: Sequence[Any], *, request_id: int | None = None) -> None:
        self.errors = list(errors)
        details = "; ".join(f"{e.field}: {e.message}" for e in self.errors)
        super().__init__(f"invalid request: {details}", request_id=request_id)

    @property
    def fields(self) -> list[str]:
        """The names of the fields at fault, in order, each once."""
        return list(dict.fromkeys(str(e.field) for e in self.errors))


class QueueFull(RequestError):
    """The runner's queue already holds ``max_queue`` waiting requests; this one was not queued."""


class RequestTimeout(RequestError, TimeoutError):
    """The request's time limit (counted from submission) passed; it was cancelled on every rank."""


class RequestCancelled(RequestError):
    """The request was cancelled: by the caller, or by the runner (stop, restart) before it completed."""


# -- errors of the runner ------------------------------------------------------------------


class RunnerError(GridgenError, RuntimeError):
    """The runner as a whole cannot serve requests.

    Also a ``RuntimeError``, which fal's code catches when it uses a runner before ``start()``.
    """


class RunnerClosed(RunnerError):
    """The runner is not running: never started, draining, stopping or stopped.

    Its message starts ``the runner is not running``, the words fal's code looks for.
    """


# -- errors of a worker --------------------------------------------------------------------


class WorkerFailure(GridgenError):
    """A worker failed: a rank raised, or a worker process died. ``.rank`` names it."""

    rank: int | None


class WorkerError(WorkerFailure):
    """An exception raised by user code on one rank.

    Attributes:
        rank: the rank that raised (None only when no single rank is to blame).
        remote_type: the qualified name of the remote exception's class, e.g. ``"ValueError"``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback, formatted as text.
        request_id: the request it failed, None for errors outside a request (startup).
    """

    def __init__(
        self,
        message: str,
        *,
        rank: int | None,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
        request_id: int | None = None,
    ) -> None:
        Exception.__init__(self, message)
        self.rank = rank
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.request_id = request_id

    @classmethod
    def from_remote(
        cls,
        rank: int,
        info: Mapping[str, Any],
        during: str = "request",
        request_id: int | None = None,
    ) -> WorkerError:
        """Build the error from the error info a rank sent (see :mod:`gridgen._protocol`)."""
        remote_type = str(info.get("type", "Exception"))
        remote_message = str(info.get("message", ""))
        text = f"rank {rank} raised {remote_type} during {during}: {remote_message}"
        target = cls
        if cls is WorkerError and info.get("invalid_request"):
            target = _RemoteInvalidRequest
        return target(
            text,
            rank=rank,
            remote_type=remote_type,
            remote_message=remote_message,
            remote_traceback=str(info.get("traceback", "")),
            request_id=request_id,
        )

    def __str__(self) -> str:
        base = str(self.args[0]) if self.args else ""
        if self.remote_traceback:
            return f"{base}\n\nRemote traceback (rank {self.rank}):\n{self.remote_traceback.rstrip()}"
        return base


class _RemoteInvalidRequest(WorkerError, InvalidRequestError):
    """An InvalidRequestError raised on a rank: both a WorkerError and an InvalidRequestError."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        WorkerError.__init__(self, message, **kwargs)
        self.errors = []


class StartupError(WorkerError):
    """``start()`` failed; every worker process was cleaned up before this was raised."""


class StartupTimeout(StartupError, TimeoutError):
    """``start(timeout=...)`` passed before every rank reported ready."""


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            name = _signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


class WorkerDiedError(WorkerFailure):
    """A worker process died. The group is unusable until ``restart()`` (or ``auto_restart``).

    Attributes:
        rank: the rank whose process died.
        exitcode: the process exit code; negative ``-N`` means killed by signal ``N``.
        signal: the signal name (``"SIGKILL"``) when killed by a signal, else ``None``.
    """

    def __init__(self, rank: int, exitcode: int | None, detail: str = "") -> None:
        self.rank = rank
        self.exitcode = exitcode
        self.signal: str | None = None
        if exitcode is not None and exitcode < 0:
            try:
                self.signal = _signal.Signals(-exitcode).name
            except ValueError:
                self.signal = None
        message = f"worker rank {rank} {_describe_exit(exitcode)}"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)


# -- wire and environment ------------------------------------------------------------------


class PayloadTooLarge(GridgenError, ValueError):
    """An encoded message is larger than the runner's ``max_message_bytes``."""


class CodecError(GridgenError, ValueError):
    """Bytes that do not decode as a gridgen wire message."""


class ModelNotFoundError(GridgenError, FileNotFoundError):
    """A model (or preview model) could not be found locally and the hub cannot be reached.

    The message names the model and says how to fix it.
    """


class LoraLoadError(GridgenError, RuntimeError):
    """Raised inside workers when a LoRA adapter a request named could not be read or loaded
    (:mod:`gridgen.diffusion.lora`). Every rank raises it together, so that request fails
    alone (the caller gets a :class:`WorkerError` whose ``remote_type`` names it) and the
    next request runs with the adapters it asks for."""


class Cancelled(GridgenError):
    """Raised inside a worker by ``check_cancelled()`` once the host cancelled the running request.

    Let it propagate out of ``__call__``: the host already stopped waiting for the result.
    """
