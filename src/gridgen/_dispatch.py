"""Dispatch: takes requests off the queue and runs them on the whole group.

One call on the group serves one request, or several merged ones (a batch) when the
worker declares them compatible (``batch_key``, see :mod:`gridgen._batching`). For one
call: broadcast the frame to every rank, route what the ranks report to each request
(:class:`~gridgen._requests.Request` decides its own verdict), and time the two grace
periods that end in a rebuild of the group:

* a rank raised: the other ranks are told to cancel; if they have not all reported
  within ``error_grace`` seconds they are assumed stuck in a collective;
* every request of the call was cancelled (or timed out) and the ranks do not stop
  within ``cancel_grace`` seconds. While one request of a batch is still wanted, the
  call goes on: its neighbours' cancels do not start the clock.

A rank that says its error escaped from a collective (``in_collective`` in the error
info) poisons the group even when every rank answered: the group is rebuilt before the
next call. The supervisor does the rebuilding; this module only decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

from ._batching import BatchPolicy
from ._control import ControlSocket
from ._options import RunnerOptions, normalize_payload
from ._protocol import ErrorInfo, Kind, Message, pack, pack_call
from ._requests import Request, RequestQueue, RequestState
from ._stats import RunnerStats
from ._supervisor import Supervisor
from .errors import GridgenError, RequestCancelled, RunnerClosed, WorkerDiedError, WorkerError

__all__ = ["Dispatcher"]

logger = logging.getLogger("gridgen.runner")

_DEATH_GRACE = 0.2  # seconds a rank's error waits for news of another rank's death


class Dispatcher:
    """Owns the queue, the requests in flight and the loop that runs them, one call at a time."""

    def __init__(
        self,
        options: RunnerOptions,
        control: ControlSocket,
        supervisor: Supervisor,
        policy: BatchPolicy,
        stats: RunnerStats | None = None,
    ) -> None:
        self.options = options
        self.stats = RunnerStats() if stats is None else stats
        self.control = control
        self.supervisor = supervisor
        self.policy = policy
        self.world_size = supervisor.world_size
        self.queue = RequestQueue(options.max_queue)
        self.running: list[Request] = []  # the requests of the call on the group
        self._requests: dict[int, Request] = {}  # queued, running, or with a result still due
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def current(self) -> Request | None:
        """The first request of the call on the group, or None when the group is idle."""
        return self.running[0] if self.running else None

    # -- submit and cancel ------------------------------------------------------------

    def submit(
        self, payload: Any, *, streaming: bool, timeout: float | None, trace_id: str | None = None
    ) -> Request:
        """Queue a request; every check (room, payload, batch key, encoding) happens before
        it is queued, so a rejected request leaves no trace (but a count in the stats)."""
        try:
            self.queue.check_room(group_busy=bool(self.running))
            payload = normalize_payload(payload)
            key, units = self.policy.describe(payload)
            request_id = next(self._ids)
            frame = pack_call(request_id, streaming, payload, max_bytes=self.options.max_message_bytes)
        except Exception as exc:
            self.stats.rejected(exc)
            raise
        loop = asyncio.get_running_loop()
        limit = self.options.request_timeout if timeout is None else timeout
        request = Request(
            request_id,
            frame,
            streaming=streaming,
            deadline=None if limit is None else loop.time() + limit,
            buffer=self.options.stream_buffer,
            world_size=self.world_size,
            loop=loop,
        )
        request.key, request.units = key, units
        request.trace_id = trace_id
        request.future.add_done_callback(lambda _: self._record(request))
        self._requests[request_id] = request
        self.queue.put(request)
        return request

    def _record(self, request: Request) -> None:
        future = request.future
        error = future.exception() if not future.cancelled() else RequestCancelled("cancelled")
        result = future.result() if error is None else None
        self.stats.finished(error, result, time.monotonic() - request.submitted_at, request.internal)

    @property
    def in_flight(self) -> int:
        """Requests out of the queue whose outcome has not reached their callers yet."""
        return sum(1 for r in self._requests.values() if r.state is not RequestState.QUEUED and not r.finished)

    def cancel(self, request: Request, error: BaseException) -> None:
        """Cancel a request: drop it if queued, else tell every rank. The caller gets ``error``."""
        if request.state is RequestState.QUEUED:
            self.queue.remove(request)
            self._requests.pop(request.id, None)
            request.finish(error=error)
            request.free_ranks()
            return
        if request.ranks_free:
            # Every rank is free already; only a deferred result was due: stop waiting for it.
            request.finish(error=error)
            self._requests.pop(request.id, None)
            return
        if not request.finished and request.mark_cancel_sent(asyncio.get_running_loop().time()):
            request.finish(error=error)
            self._broadcast(pack(Kind.CANCEL, request.id))
            logger.info("request %d cancelled: %s", request.id, error, extra=request.log_extra)

    def _broadcast(self, frame: bytes) -> None:
        self.control.broadcast(self.supervisor.generation, self.world_size, frame)

    # -- the loop ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gridgen-dispatcher")

    async def _loop(self) -> None:
        while True:
            head = await self._next_request()
            if head is None:
                return
            if head.finished and not head.internal:
                continue  # cancelled while waiting its turn
            if not await self._await_healthy(head):
                continue
            batch = await self.policy.gather(head, self.queue)
            if batch is None:
                await self.run([head], head.frame)
            else:
                live = [r for r in batch if not r.finished]  # one may have gone while we waited
                if live:
                    await self.run(live, self.policy.frame(live))

    async def _next_request(self) -> Request | None:
        queue = self.queue
        while not len(queue):
            if self._closing:
                return None
            queue.wake.clear()
            interval = self.options.keepalive_interval
            if interval is not None and self.supervisor.health == "ready":
                try:
                    await asyncio.wait_for(queue.wake.wait(), interval)
                except TimeoutError:
                    await self._keepalive()
            else:
                await queue.wake.wait()
        return queue.pop()

    async def _await_healthy(self, request: Request) -> bool:
        """Wait out a restart; fail the request if the group is dead or the runner stopping."""
        supervisor = self.supervisor
        while supervisor.health != "ready":
            if self._closing or supervisor.health == "closed":
                request.finish(error=RunnerClosed("the runner stopped before this request ran"))
                return False
            if supervisor.health == "dead":
                assert supervisor.dead_error is not None
                request.finish(error=supervisor.dead_error)
                return False
            await supervisor.health_changed.wait()
            if request.finished:
                return False
        return True

    async def _keepalive(self) -> None:
        payload = self.options.keepalive_payload
        assert payload is not None
        request_id = next(self._ids)
        frame = pack_call(request_id, False, payload, max_bytes=self.options.max_message_bytes)
        request = Request(
            request_id,
            frame,
            streaming=False,
            deadline=None,
            buffer=1,
            world_size=self.world_size,
            loop=asyncio.get_running_loop(),
            internal=True,
        )
        self._requests[request_id] = request
        logger.debug("keepalive request %d", request_id)
        await self.run([request], frame)

    async def run(self, requests: list[Request], frame: bytes) -> None:
        """Run one call on the group until every rank is free of each of its requests (or
        the group is rebuilt)."""
        loop = asyncio.get_running_loop()
        changed = requests[0].changed if len(requests) == 1 else asyncio.Event()
        for request in requests:
            request.start()
            request.changed = changed  # any report on any of them wakes this loop
        self.running = requests
        wanted = [r for r in requests if not r.internal]
        if wanted:
            self.stats.call_started(
                [r.units for r in wanted], [(r.started_at or r.submitted_at) - r.submitted_at for r in wanted]
            )
        abandoned_at: float | None = None  # when the last request of the call stopped waiting
        try:
            self._broadcast(frame)
            while not all(r.ranks_free for r in requests):
                errors = [r.first_error_at for r in requests if r.first_error_at is not None]
                timeout = None
                if errors:
                    timeout = min(errors) + self.options.error_grace - loop.time()
                elif all(r.finished for r in requests):
                    abandoned_at = loop.time() if abandoned_at is None else abandoned_at
                    timeout = abandoned_at + self.options.cancel_grace - loop.time()
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), timeout)
                except TimeoutError:
                    await self._rebuild_stuck(requests, bool(errors))
                    break
            else:
                if any(r.collective_failed for r in requests) and self.supervisor.health == "ready":
                    # Every rank answered, but a collective was aborted (e.g. it timed out
                    # before error_grace ran out): the group is poisoned all the same.
                    await self._rebuild(f"a collective failed during request {requests[0].id}")
        finally:
            self.running = []
            for request in requests:
                if request.finished:
                    self._requests.pop(request.id, None)

    async def _rebuild_stuck(self, requests: list[Request], errored: bool) -> None:
        everyone = set(range(self.world_size))
        stuck = sorted(set().union(*(everyone - r.released for r in requests)))
        why = "a rank raised" if errored else "the request was cancelled"
        logger.warning(
            "request %s: %s and ranks %s did not finish within %.1fs; rebuilding the group",
            ", ".join(str(r.id) for r in requests), why, stuck,
            self.options.error_grace if errored else self.options.cancel_grace,
        )
        await self._rebuild(f"ranks {stuck} stuck after {why}")

    async def _rebuild(self, why: str) -> None:
        with contextlib.suppress(GridgenError):  # a failed restart leaves the group "dead"
            await self.supervisor.restart(why, None)

    # -- what the ranks report ------------------------------------------------------------

    def on_message(self, rank: int, message: Message) -> None:
        request = self._requests.get(message.request_id)
        if request is None:
            return
        kind = message.kind
        if kind is Kind.ITEM:
            request.push(message.data)
        elif kind is Kind.RELEASED:
            request.report_released(rank)
        elif kind is Kind.DONE:
            request.report_done(rank, message.data)
        elif kind is Kind.CANCELLED:
            request.report_cancelled(rank)
        elif kind is Kind.ERROR:
            self._on_error(request, rank, ErrorInfo.from_wire(message.data))
        if request.all_reported:
            self._requests.pop(request.id, None)

    def _on_error(self, request: Request, rank: int, info: ErrorInfo) -> None:
        error = WorkerError.from_remote(rank, info.to_wire(), request_id=request.id)
        loop = asyncio.get_running_loop()
        if rank in request.reported:
            return
        logger.error(
            "request %d failed on rank %d: %s", request.id, rank, error.remote_message,
            extra={"rank": rank, **request.log_extra},
        )
        if not request.report_error(rank, error, info.in_collective, loop.time()):
            return
        if not request.all_released:
            # Cooperative ranks stop early; stuck ones are handled by error_grace.
            self._broadcast(pack(Kind.CANCEL, request.id))
            # A rank's error is often the echo of another rank's death (gloo reports
            # "connection reset" before the dead process's sentinel fires): give the
            # sentinel a moment so the caller learns the cause, not the symptom.
            loop.call_later(_DEATH_GRACE, self._surface_error, request, error)
        elif not request.finished:
            request.finish(error=error)

    def _surface_error(self, request: Request, error: WorkerError) -> None:
        if request.finished:
            return
        dead = self.supervisor.dead_rank()
        if dead is not None:
            rank, exitcode = dead
            request.finish(error=WorkerDiedError(rank, exitcode, f"{error.remote_type} on rank {error.rank} followed"))
            return
        request.finish(error=error)

    def fail_unfinished(self, error: GridgenError) -> None:
        """Fail the running requests and those whose deferred results are still due."""
        for request in list(self._requests.values()):
            if request.state is RequestState.QUEUED:
                continue
            request.finish(error=error)
            if not request.ranks_free:
                request.free_ranks()
            self._requests.pop(request.id, None)

    # -- drain and stop ---------------------------------------------------------------

    async def drain(self, timeout: float | None) -> int:
        """Wait up to ``timeout`` seconds for every queued and running request to end, then
        cancel the rest with an error that says so. Returns how many were cancelled."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            pending = [r.future for r in self._requests.values() if not r.finished and not r.internal]
            if not pending:
                return 0
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        left = [r for r in self._requests.values() if not r.finished and not r.internal]
        for request in left:
            error = RequestCancelled(
                f"the service is shutting down and this request did not finish within the drain "
                f"timeout ({timeout:g} s)",
                request_id=request.id,
            )
            logger.warning("request %d cancelled: %s", request.id, error, extra=request.log_extra)
            self.cancel(request, error)
        return len(left)

    async def stop(self, grace: float) -> bool:
        """Fail what is queued, let the running call finish for ``grace`` seconds, then wait
        as long for deferred results. Returns True when a running call was abandoned."""
        self._closing = True
        for request in self.queue.drain():
            self._requests.pop(request.id, None)
            request.finish(error=RunnerClosed("the runner stopped before this request ran"))
        abandoned = False
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done:
                for current in self.running:
                    logger.warning(
                        "stop(): request %d still running after %.1fs; abandoning it", current.id, grace,
                        extra=current.log_extra,
                    )
                    current.finish(error=RequestCancelled("the runner stopped while this request ran"))
                    abandoned = True
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        pending = [r.future for r in self._requests.values() if r.state is not RequestState.QUEUED and not r.finished]
        if pending and not abandoned:
            # deferred results (e.g. images being encoded) still on their way
            await asyncio.wait(pending, timeout=grace)
        self.fail_unfinished(RequestCancelled("the runner stopped before this result arrived"))
        return abandoned
