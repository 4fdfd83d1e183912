"""A graceful drain on SIGTERM or Ctrl-C, for ``gridgen serve`` (uvicorn).

uvicorn on its own stops listening at the first signal, so a request sent during a
rolling update finds the port closed, and it re-raises the signal once it is done (exit
status 130 or 143). :class:`DrainingServer` instead, at the first SIGTERM or SIGINT:

1. puts the runner in ``draining`` (:meth:`DistributedRunner.drain`): ``/ready`` answers
   503 at once, new ``/generate`` and ``/stream`` requests 503 with ``Retry-After``;
2. lets queued and running requests finish, for ``drain_timeout`` seconds;
3. cancels what is still running then, each with an error that names the drain;
4. stops uvicorn (the responses under way are sent), then the runner and its workers
   (the app's lifespan), and :attr:`drained` is True: the command exits 0.

A second signal stops at once: uvicorn exits without waiting and the workers are killed
(:attr:`forced`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn

from .logs import LogFormat, announce

__all__ = ["DrainingServer"]

logger = logging.getLogger("gridgen.server")


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains ``runner`` before it stops (see the module docstring)."""

    def __init__(
        self, config: uvicorn.Config, runner: Any, drain_timeout: float | None, log_format: LogFormat = "text"
    ) -> None:
        super().__init__(config)
        self.log_format = log_format
        self.runner = runner
        self.drain_timeout = drain_timeout
        self.drained = False
        self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._signalled = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it would remember the signal and raise it again at the end.
        if not self._signalled and self._loop is not None:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._begin_drain)
            return
        self.forced = True
        self.should_exit = self.force_exit = True
        announce("gridgen: stopping now (second signal); requests under way are lost", self.log_format)
        kill = getattr(self.runner, "_kill_now", None)
        if kill is not None:
            kill()

    def _begin_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        runner = self.runner
        waiting = runner.queue_size + runner.in_flight if runner.state != "new" else 0
        limit = "no limit" if self.drain_timeout is None else f"at most {self.drain_timeout:g} s"
        announce(
            f"gridgen: draining: {waiting} request(s) to finish ({limit}); /ready says 503, new requests "
            "get 503; a second Ctrl-C stops at once",
            self.log_format,
        )
        try:
            cancelled = await runner.drain(self.drain_timeout)
            if cancelled:
                announce(f"gridgen: drain timeout: {cancelled} request(s) cancelled", self.log_format)
            self.drained = not self.forced
        finally:
            self.should_exit = True
