"""A request on the host: its state machine, the FIFO queue, the caller's handle, typed events.

Nothing here touches a socket or a process: the dispatcher reports what each rank
said (:meth:`Request.report_done` and friends) and the request decides its verdict,
so all of it is unit-tested without processes (tests/unit/test_requests.py).

States, as the caller sees them::

    queued ──start()──> running ──finish(result)──> done
       │                   └──────finish(error)───> failed | cancelled
       └──finish(error)──> cancelled | failed          (dropped before it ran)

Apart from the caller's view, the request tracks the *group's* view: ``ranks_free``
turns true once every rank has finished with it (answered, released, or the group was
rebuilt), which is when the dispatcher may send the next request. The two differ for a
cancelled request whose ranks are still stopping, and for a deferred result (the ranks
are free, the value is on its way).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import AsyncGenerator, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import (
    QueueFull,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    WorkerError,
)

__all__ = [
    "Request",
    "RequestHandle",
    "RequestQueue",
    "RequestState",
    "StreamEvent",
    "StreamItem",
    "StreamResult",
]

T = TypeVar("T")


class RequestState(str, enum.Enum):
    """Where a request is, as its caller sees it (compares equal to its string value)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


_FINAL = frozenset({RequestState.DONE, RequestState.FAILED, RequestState.CANCELLED})


@dataclass(frozen=True, slots=True)
class StreamItem(Generic[T]):
    """One item a worker streamed with ``add_streaming_result``."""

    value: T


@dataclass(frozen=True, slots=True)
class StreamResult(Generic[T]):
    """The request's final value (rank 0's return value); always the last event."""

    value: T


StreamEvent = StreamItem[Any] | StreamResult[Any]


def _for_request(error: BaseException, request_id: int) -> BaseException:
    """``error`` naming this request: a request error without an id is copied with it, since
    one error (e.g. "the group was restarted") may end several requests."""
    if isinstance(error, (RequestError, WorkerError)) and error.request_id is None:
        named = type(error).__new__(type(error), *error.args)  # no __init__: signatures differ
        named.__dict__.update(error.__dict__)
        named.__cause__, named.__context__ = error.__cause__, error.__context__
        named.request_id = request_id
        return named
    return error


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Request:
    """The host's record of one request and its verdict."""

    def __init__(
        self,
        request_id: int,
        frame: bytes,
        *,
        streaming: bool,
        deadline: float | None,
        buffer: int,
        world_size: int,
        loop: asyncio.AbstractEventLoop,
        internal: bool = False,
    ) -> None:
        self.id = request_id
        self.frame = frame
        self.streaming = streaming
        self.deadline = deadline
        self.internal = internal  # a keepalive: nobody waits for it
        self.trace_id: str | None = None  # the caller's id for it (the HTTP x-request-id)
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None  # when its call began on the group
        self.key: Hashable | None = None  # requests with equal keys may share one call
        self.units = 1  # work units counted against max_batch_units
        self.world_size = world_size
        self.state = RequestState.QUEUED
        self.future: asyncio.Future[Any] = loop.create_future()
        # The caller may have stopped waiting (cancelled, timed out): mark errors as seen.
        self.future.add_done_callback(_consume_exception)
        self.items: collections.deque[Any] = collections.deque(maxlen=buffer)
        self.dropped = 0
        self.wake = asyncio.Event()  # the consumer: a new item or the end
        self.changed = asyncio.Event()  # the dispatcher: a rank reported, a cancel was sent
        self.ranks_free = False  # every rank has finished with it (or the group is gone)
        self.reported: set[int] = set()  # ranks whose final answer (done/error/cancelled) came
        self.released: set[int] = set()  # ranks free for the next request
        self.result: Any = None
        self.first_error: WorkerError | None = None
        self.first_error_at: float | None = None
        self.collective_failed = False  # a rank said its error escaped from a collective
        self.cancel_at: float | None = None

    def __repr__(self) -> str:
        return f"<Request {self.id} {self.state.value}>"

    # -- the caller's view -------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The caller has its outcome (a result or an error)."""
        return self.future.done()

    def start(self) -> None:
        if self.state is not RequestState.QUEUED:
            raise RuntimeError(f"request {self.id} cannot start: it is {self.state.value}")
        self.state = RequestState.RUNNING
        self.started_at = time.monotonic()

    @property
    def log_extra(self) -> dict[str, Any]:
        """``extra=`` for log lines about this request: its trace id, for JSON logs."""
        return {"request_id": self.trace_id} if self.trace_id is not None else {}

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """Give the caller its outcome; the first outcome wins, later ones are ignored."""
        if not self.future.done():
            if error is None:
                self.future.set_result(result)
                self.state = RequestState.DONE
            else:
                error = _for_request(error, self.id)
                self.future.set_exception(error)
                cancelled = isinstance(error, (RequestCancelled, RequestTimeout))
                self.state = RequestState.CANCELLED if cancelled else RequestState.FAILED
        self.wake.set()

    def push(self, item: Any) -> None:
        """A streamed item for the consumer; ignored unless streaming and still open."""
        if not self.streaming or self.future.done():
            return
        if len(self.items) == self.items.maxlen:
            # A slow consumer: keep the newest previews, drop the oldest. Final results
            # never go through this buffer, so they are never dropped.
            self.dropped += 1
        self.items.append(item)
        self.wake.set()

    # -- the group's view -----------------------------------------------------------

    def free_ranks(self) -> None:
        """Every rank is done with this request (or the group that ran it is gone)."""
        self.ranks_free = True
        self.changed.set()
        self.wake.set()

    def report_released(self, rank: int) -> None:
        self.released.add(rank)
        self._check_free()

    def report_done(self, rank: int, value: Any) -> None:
        if self._first_report(rank) and rank == 0:
            self.result = value
        self._conclude()

    def report_cancelled(self, rank: int) -> None:
        self._first_report(rank)
        self._conclude()

    def report_error(self, rank: int, error: WorkerError, in_collective: bool, now: float) -> bool:
        """Record a rank's error; True when it is the request's first (the dispatcher then
        tells the other ranks to stop and starts the error grace)."""
        if not self._first_report(rank):
            return False
        self.collective_failed = self.collective_failed or in_collective
        first = self.first_error_at is None
        if first:
            self.first_error = error
            self.first_error_at = now
        self._conclude()
        return first

    def mark_cancel_sent(self, now: float) -> bool:
        """Note that the ranks were told to cancel; False when that was done already."""
        if self.cancel_at is not None:
            return False
        self.cancel_at = now
        self.changed.set()
        return True

    @property
    def all_reported(self) -> bool:
        return len(self.reported) == self.world_size

    @property
    def all_released(self) -> bool:
        return len(self.released) == self.world_size

    def verdict(self) -> tuple[Any, BaseException | None]:
        """Once every rank reported: (result, None), or (None, the error the caller gets)."""
        if self.first_error is not None:
            return None, self.first_error
        if self.cancel_at is not None:
            return None, RequestCancelled("request cancelled", request_id=self.id)
        return self.result, None

    def _first_report(self, rank: int) -> bool:
        if rank in self.reported:
            return False
        self.reported.add(rank)
        self.released.add(rank)
        return True

    def _conclude(self) -> None:
        if self.all_reported:
            result, error = self.verdict()
            self.finish(result, error)
        self._check_free()

    def _check_free(self) -> None:
        if not self.ranks_free and self.all_released:
            self.free_ranks()
        self.changed.set()


class RequestQueue:
    """The FIFO queue of requests waiting for the group, bounded by ``max_queue``."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._waiting: collections.deque[Request] = collections.deque()
        self.wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._waiting)

    def check_room(self, group_busy: bool) -> None:
        """Raise QueueFull unless one more request may wait (``max_queue=0``: only when idle)."""
        if len(self._waiting) >= self.max_queue and not (self.max_queue == 0 and not group_busy):
            raise QueueFull(
                f"the queue already holds {len(self._waiting)} waiting requests (max_queue={self.max_queue})"
            )

    def put(self, request: Request) -> None:
        self._waiting.append(request)
        request.future.add_done_callback(lambda _: self.wake.set())
        self.wake.set()

    def pop(self) -> Request | None:
        return self._waiting.popleft() if self._waiting else None

    def remove(self, request: Request) -> bool:
        try:
            self._waiting.remove(request)
        except ValueError:
            return False
        return True

    def position(self, request: Request) -> int | None:
        if request.state is not RequestState.QUEUED:
            return None
        try:
            return self._waiting.index(request)
        except ValueError:
            return None

    def drain(self) -> list[Request]:
        drained = list(self._waiting)
        self._waiting.clear()
        self.wake.set()
        return drained


Canceller = Callable[[Request, BaseException], None]


class RequestHandle:
    """A submitted request: its queue position, its streamed items, its result, and cancel."""

    def __init__(self, request: Request, queue: RequestQueue, cancel: Canceller) -> None:
        self._request = request
        self._queue = queue
        self._cancel = cancel

    @property
    def id(self) -> int:
        """The request's id, unique within this runner (workers see it as ``request_id``)."""
        return self._request.id

    @property
    def status(self) -> str:
        """``"queued"``, ``"running"``, then ``"done"``, ``"failed"`` or ``"cancelled"`` once
        :meth:`done` is true (a :class:`RequestState`, which compares equal to these strings)."""
        return self._request.state

    @property
    def trace_id(self) -> str | None:
        """The caller's id for this request (``submit(..., trace_id=)``; the server passes
        the HTTP ``x-request-id``), on the runner's log lines about it."""
        return self._request.trace_id

    @property
    def position(self) -> int | None:
        """How many requests wait ahead of this one (0: it runs next); None once running or done."""
        return self._queue.position(self._request)

    @property
    def dropped_items(self) -> int:
        """Streamed items dropped because the consumer fell more than ``stream_buffer`` behind."""
        return self._request.dropped

    def done(self) -> bool:
        """True once the request has a result or an error."""
        return self._request.finished

    def cancel(self) -> None:
        """Drop the request if queued; if running, send a cancel to every rank."""
        self._cancel(self._request, RequestCancelled("request cancelled by the caller", request_id=self.id))

    def _remaining(self) -> float | None:
        if self._request.deadline is None:
            return None
        return self._request.deadline - asyncio.get_running_loop().time()

    def _timed_out(self) -> RequestTimeout:
        error = RequestTimeout(
            f"request {self.id} passed its time limit (counted from submission)", request_id=self.id
        )
        self._cancel(self._request, error)
        return error

    async def result(self) -> Any:
        """Wait for rank 0's return value; raise the request's error."""
        future = self._request.future
        try:
            done, _ = await asyncio.wait({future}, timeout=self._remaining())
        except asyncio.CancelledError:
            self.cancel()
            raise
        if not done:
            raise self._timed_out()
        return future.result()

    async def _next_event(self, idle_timeout: float | None) -> StreamEvent:
        """The next item, else the result once the request is over; raise its error."""
        request = self._request
        loop = asyncio.get_running_loop()
        while True:
            if request.items:
                return StreamItem(request.items.popleft())
            if request.future.done():
                return StreamResult(request.future.result())
            request.wake.clear()
            limits = [t for t in (self._remaining(), idle_timeout) if t is not None]
            started = loop.time()
            try:
                await asyncio.wait_for(request.wake.wait(), min(limits) if limits else None)
            except TimeoutError:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out() from None
                error = RequestTimeout(
                    f"request {self.id}: no stream item for {loop.time() - started:.1f}s "
                    f"(idle_timeout={idle_timeout})",
                    request_id=self.id,
                )
                self._cancel(request, error)
                raise error from None

    async def updates(self, idle_timeout: float | None = None) -> AsyncGenerator[StreamEvent, None]:
        """Yield a :class:`StreamItem` for each streamed item as it arrives, then one
        :class:`StreamResult`; raise the request's error instead of the result.

        ``idle_timeout`` limits the wait between two events. Leaving the loop early
        cancels the request.
        """
        try:
            while True:
                event = await self._next_event(idle_timeout)
                yield event
                if isinstance(event, StreamResult):
                    return
        finally:
            if not self._request.future.done():
                self.cancel()

    async def events(self, idle_timeout: float | None = None) -> AsyncGenerator[Any, None]:
        """Yield each streamed item as it arrives, then the final result, as plain values.

        :meth:`updates` yields the same as typed events, so a consumer can tell the
        result from the items. ``idle_timeout`` limits the wait between two items.
        Leaving the loop early cancels the request.
        """
        try:
            while True:
                event = await self._next_event(idle_timeout)
                yield event.value
                if isinstance(event, StreamResult):
                    return
        finally:
            if not self._request.future.done():
                self.cancel()
