"""A blocking facade over ``DistributedRunner`` for scripts and notebooks.

The runner lives on an event loop in a background thread; each method hands a
coroutine to that loop and blocks for its result. Ctrl-C while waiting
cancels the request on every rank.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator, Mapping
from typing import Any, Protocol, TypeVar

__all__ = ["SyncRunner"]

T = TypeVar("T")


class AsyncRunner(Protocol):
    """What the facade calls: :class:`~gridgen.DistributedRunner` (named by shape, so that
    this module does not import the runner that imports it)."""

    async def start(self, timeout: float | None = None, **setup_kwargs: Any) -> None: ...
    async def stop(self, timeout: float | None = None) -> None: ...
    async def restart(self, timeout: float | None = None) -> None: ...
    async def invoke(self, payload: Mapping[str, Any] | Any = None, timeout: float | None = None) -> Any: ...
    def stream(
        self,
        payload: Mapping[str, Any] | Any = None,
        timeout: float | None = None,
        streaming_timeout: float | None = None,
        as_text_events: bool = False,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[Any, None]: ...


class SyncRunner:
    """``with runner.sync(**setup_kwargs) as r: r.invoke({...})``; also usable without ``with``."""

    def __init__(self, runner: AsyncRunner, setup_kwargs: Mapping[str, Any]) -> None:
        self.runner = runner
        self._setup_kwargs = dict(setup_kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="gridgen-sync-loop", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return self._loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: cancel the request on every rank
            raise

    def start(self, timeout: float | None = None, **setup_kwargs: Any) -> None:
        """Start the runner (see :meth:`DistributedRunner.start`); blocks until every rank is ready."""
        self._call(self.runner.start(timeout=timeout, **(setup_kwargs or self._setup_kwargs)))

    def invoke(self, payload: Mapping[str, Any] | Any, *, timeout: float | None = None) -> Any:
        """Run ``payload`` on every rank and return rank 0's value (see :meth:`DistributedRunner.invoke`)."""
        return self._call(self.runner.invoke(payload, timeout=timeout))

    def stream(self, payload: Mapping[str, Any] | Any, **kwargs: Any) -> Iterator[Any]:
        """Iterate the streamed items, then the result (see :meth:`DistributedRunner.stream`).

        Leaving the loop early cancels the request on every rank.
        """
        agen = self.runner.stream(payload, **kwargs)

        async def step() -> Any:
            return await agen.__anext__()

        async def close() -> None:
            await agen.aclose()

        try:
            while True:
                try:
                    yield self._call(step())
                except StopAsyncIteration:
                    return
        finally:
            self._call(close())

    def restart(self, timeout: float | None = None) -> None:
        """Terminate and respawn the worker group (see :meth:`DistributedRunner.restart`)."""
        self._call(self.runner.restart(timeout=timeout))

    def stop(self, timeout: float | None = None) -> None:
        """Stop the runner and its event-loop thread (see :meth:`DistributedRunner.stop`)."""
        if self._loop is None:
            return
        try:
            self._call(self.runner.stop(timeout=timeout))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> SyncRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
