"""fal.distributed's remaining semantics, as thin layers over gridgen's own classes.

```python
from gridgen.fal import DistributedRunner, DistributedWorker  # was: from fal.distributed import ...
```

Worker code written for fal runs on :mod:`gridgen` itself with only the import changed
(``docs/migrating.md`` lists what that covers). This module is for code that also
depends on the places where gridgen deliberately does differently:

* **errors are returned, not raised**: ``invoke`` returns ``{"error": "<message>"}`` when
  a rank raised or a worker process died, and a failing ``stream`` yields a last item
  ``{"error": "<message>"}`` (as an SSE event with ``as_text_events=True``), so
  ``if "error" in result`` checks keep working. Misuse (not started, a full queue, a
  payload that cannot travel) and time limits still raise gridgen's own errors, except
  in an ``as_text_events`` stream, which ends with the error event whatever failed.
* **only rank 0's** ``add_streaming_result`` and ``add_streaming_error`` items reach the
  caller; ``add_streaming_error`` sends ``{"error": "<message>"}``.
* the base ``DistributedWorker.__call__`` returns ``{}``.
* ``DistributedRunner()`` defaults ``worker_cls`` to this module's ``DistributedWorker``
  and ``world_size`` to 1.

Everything else (fal's call signatures, constructor keywords, ``rank_print``, async
methods, the ``"streaming"`` key ...) is gridgen's own behaviour, inherited unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any, TypeVar

from . import runner as _runner
from . import worker as _worker
from ._events import text_event
from .errors import GridgenError, WorkerDiedError, WorkerError

__all__ = ["DistributedRunner", "DistributedWorker"]

logger = logging.getLogger("gridgen.fal")

# The errors of running a request, which fal returns as {"error": ...}.
_RETURNED_ERRORS = (WorkerError, WorkerDiedError)


def _error_result(error: BaseException) -> dict[str, str]:
    if isinstance(error, WorkerError) and error.remote_type:
        return {"error": error.remote_message}
    return {"error": str(error)}


class DistributedWorker(_worker.DistributedWorker):
    """gridgen's worker with fal's streaming and default ``__call__``.

    Items that ranks other than 0 stream are dropped on their rank, as fal drops them.
    """

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        """fal's base worker does nothing and returns ``{}``."""
        return {}

    def add_streaming_result(self, result: Any, image_format: str = "jpeg", as_text_event: bool = False) -> None:
        """Send ``result`` to the caller of ``stream()``, from rank 0 only (other ranks: dropped)."""
        if self.rank == 0:
            super().add_streaming_result(result, image_format=image_format, as_text_event=as_text_event)

    def add_streaming_error(self, error: BaseException | str) -> None:
        """Send ``{"error": "<message>"}`` to the caller of ``stream()``, from rank 0 only."""
        if self.rank == 0:
            super().add_streaming_result({"error": str(error)})


W = TypeVar("W", bound=_worker.DistributedWorker)


class DistributedRunner(_runner.DistributedRunner[W]):
    """gridgen's runner with fal's defaults, and errors returned as ``{"error": message}``.

    Takes every keyword argument of :class:`gridgen.DistributedRunner`.
    """

    def __init__(
        self,
        worker_cls: type[W] = DistributedWorker,  # type: ignore[assignment]
        world_size: int | None = 1,
        **options: Any,
    ) -> None:
        super().__init__(worker_cls, world_size, **options)

    async def invoke(self, payload: Mapping[str, Any] | Any = None, timeout: float | None = None) -> Any:
        """Rank 0's return value, or ``{"error": "<message>"}`` when a rank raised or died."""
        try:
            return await super().invoke(payload, timeout)
        except _RETURNED_ERRORS as exc:
            return _error_result(exc)

    async def stream(  # type: ignore[override]
        self,
        payload: Mapping[str, Any] | Any = None,
        timeout: float | None = None,
        streaming_timeout: float | None = None,
        as_text_events: bool = False,
        **options: Any,
    ) -> AsyncGenerator[Any, None]:
        """gridgen's ``stream``, ending with an ``{"error": "<message>"}`` item instead of raising.

        With ``as_text_events=True`` every gridgen error (a time limit too) ends the stream
        this way, as an SSE event, so an HTTP client always gets a complete response.
        """
        caught = GridgenError if as_text_events else _RETURNED_ERRORS
        items = super().stream(payload, timeout, streaming_timeout, False, **options)
        try:
            try:
                async for item in items:
                    yield text_event(item) if as_text_events else item
            except caught as exc:
                error = _error_result(exc)
                logger.warning("stream ended with an error item: %s", error["error"])
                yield text_event(error) if as_text_events else error
        finally:
            await items.aclose()
