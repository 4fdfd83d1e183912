"""Every exception gridgen raises, in one tree.

```
GridgenError
├── WorkerError            a rank raised inside setup/__call__; carries .rank and the remote traceback
│   └── StartupError       start() failed: setup raised, a rank died while starting, or start timed out
│       └── StartupTimeout also a TimeoutError
├── WorkerDiedError        a worker process died (killed, segfault, OOM); .rank, .exitcode, .signal
├── QueueFull              the request queue is at max_queue; nothing was queued
├── RunnerClosed           the runner is stopped (or stopping) and takes no more requests
├── RequestTimeout         a request's time limit passed (also a TimeoutError)
├── RequestCancelled       the request was cancelled by the runner (stop, restart) rather than by you
├── PayloadTooLarge        an encoded message is over max_message_bytes (also a ValueError)
├── CodecError             bytes that are not a valid gridgen message (also a ValueError)
├── ModelNotFoundError     a model could not be found locally or on the hub (also a FileNotFoundError)
└── Cancelled              raised *inside workers* by check_cancelled() when the host cancelled the request
```

Errors from a rank keep the remote exception's type name, message and formatted
traceback as data (``remote_type``, ``remote_message``, ``remote_traceback``):
nothing from a worker is unpickled, so the original class is never rebuilt on the
host.
"""

from __future__ import annotations

import signal as _signal

__all__ = [
    "Cancelled",
    "CodecError",
    "GridgenError",
    "ModelNotFoundError",
    "PayloadTooLarge",
    "QueueFull",
    "RequestCancelled",
    "RequestTimeout",
    "RunnerClosed",
    "StartupError",
    "StartupTimeout",
    "WorkerDiedError",
    "WorkerError",
]


class GridgenError(Exception):
    """Base class of every error gridgen raises."""


class WorkerError(GridgenError):
    """An exception raised by user code on one rank.

    Attributes:
        rank: the rank that raised.
        remote_type: the qualified name of the remote exception's class, e.g. ``"ValueError"``.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback, formatted as text.
    """

    def __init__(
        self,
        message: str,
        *,
        rank: int | None,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    @classmethod
    def from_remote(cls, rank: int, info: dict[str, str], during: str = "request") -> WorkerError:
        remote_type = str(info.get("type", "Exception"))
        remote_message = str(info.get("message", ""))
        text = f"rank {rank} raised {remote_type} during {during}: {remote_message}"
        return cls(
            text,
            rank=rank,
            remote_type=remote_type,
            remote_message=remote_message,
            remote_traceback=str(info.get("traceback", "")),
        )

    def __str__(self) -> str:
        base = super().__str__()
        if self.remote_traceback:
            return f"{base}\n\nRemote traceback (rank {self.rank}):\n{self.remote_traceback.rstrip()}"
        return base


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


class WorkerDiedError(GridgenError):
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


class QueueFull(GridgenError):
    """The runner's queue already holds ``max_queue`` waiting requests; this one was not queued."""


class RunnerClosed(GridgenError):
    """The runner is stopped or stopping, or was never started."""


class RequestTimeout(GridgenError, TimeoutError):
    """The request's time limit (counted from submission) passed; it was cancelled on every rank."""


class RequestCancelled(GridgenError):
    """The runner dropped the request (it was stopping or restarting) before it completed."""


class PayloadTooLarge(GridgenError, ValueError):
    """An encoded message is larger than the runner's ``max_message_bytes``."""


class CodecError(GridgenError, ValueError):
    """Bytes that do not decode as a gridgen wire message."""


class ModelNotFoundError(GridgenError, FileNotFoundError):
    """A model (or preview model) could not be found locally and the hub cannot be reached.

    The message names the model and says how to fix it.
    """


class Cancelled(GridgenError):
    """Raised inside a worker by ``check_cancelled()`` once the host cancelled the running request.

    Let it propagate out of ``__call__``: the host already stopped waiting for the result.
    """
