"""The host's control socket: one ZeroMQ ROUTER in the runner's private directory.

It owns the directory (mode 0700, removed at close), the session key, the read loop
and sends. It authenticates and parses every incoming frame (:mod:`gridgen._protocol`)
and hands valid messages, with the sender's generation and rank, to one callback; it
knows nothing about requests or processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ._options import RunnerOptions
from ._protocol import SESSION_KEY_BYTES, WORKER_KINDS, Message, parse, routing_id

__all__ = ["ControlSocket"]

logger = logging.getLogger("gridgen.runner")

OnMessage = Callable[[int, Message], None]


class ControlSocket:
    """Bind, read, send. ``on_message(rank, message)`` runs on the event loop."""

    def __init__(self, options: RunnerOptions) -> None:
        self._options = options
        self.key = secrets.token_bytes(SESSION_KEY_BYTES)
        self.dir: str | None = None
        self.address = ""
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._members: dict[bytes, int] = {}  # routing id -> rank, for the current generation only

    def open(self, on_message: OnMessage) -> None:
        self.dir = tempfile.mkdtemp(prefix="gridgen-")  # mode 0700
        self.address = f"ipc://{self.dir}/control"
        self._ctx = zmq.asyncio.Context()
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, self._options.max_message_bytes + 1024)
        router.bind(self.address)
        os.chmod(os.path.join(self.dir, "control"), 0o600)
        self._router = router
        self._reader = asyncio.create_task(self._read_loop(router, on_message), name="gridgen-reader")

    def admit(self, generation: int, world_size: int) -> None:
        """Accept messages from this generation's ranks only; earlier ones are ignored from now on."""
        self._members = {routing_id(generation, rank): rank for rank in range(world_size)}

    def forget(self) -> None:
        """Accept no rank's messages (the group is being replaced)."""
        self._members = {}

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self.remove_dir()

    def remove_dir(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def send(self, generation: int, rank: int, frame: bytes) -> None:
        if self._router is None:
            return
        # zmq.asyncio reports a failed send (ROUTER_MANDATORY: the peer is gone) through the future.
        sent: asyncio.Future[Any] = self._router.send_multipart(  # type: ignore[assignment]
            [routing_id(generation, rank), frame], flags=zmq.NOBLOCK
        )
        sent.add_done_callback(lambda f: _log_send_failure(rank, f))

    def broadcast(self, generation: int, world_size: int, frame: bytes) -> None:
        for rank in range(world_size):
            self.send(generation, rank, frame)

    async def _read_loop(self, router: zmq.asyncio.Socket, on_message: OnMessage) -> None:
        while True:
            try:
                frames = await router.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            if len(frames) != 3:
                logger.warning("dropped a control message with %d frames", len(frames))
                continue
            identity, key, body = frames
            if not hmac.compare_digest(key, self.key):
                logger.warning("dropped a control message without the session key (from %r)", identity[:32])
                continue
            rank = self._members.get(identity)
            if rank is None:
                continue  # a rank of a group that was already replaced
            try:
                message = parse(body, WORKER_KINDS, max_bytes=self._options.max_message_bytes)
            except ValueError as exc:  # CodecError and PayloadTooLarge are ValueErrors
                logger.warning("dropped a malformed message from rank %d: %s", rank, exc)
                continue
            try:
                on_message(rank, message)
            except Exception:
                logger.exception("error handling %s from rank %d", message.kind.value, rank)


def _log_send_failure(rank: int, sent: asyncio.Future[Any]) -> None:
    if not sent.cancelled() and sent.exception() is not None:
        # The rank's connection is gone; its sentinel reports the death.
        logger.warning("could not send to rank %d: %s", rank, sent.exception(), extra={"rank": rank})
