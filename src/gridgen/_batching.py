"""Merging queued requests into one call (the host's side of batching).

At submit, :meth:`BatchPolicy.describe` asks the worker class to check the request
against its setup arguments (``check_payload``) and for its key and work units
(``batch_key`` / ``batch_units``; classmethods run on the host): an exception there
rejects that request before it is queued. When the group is free, the
dispatcher takes the head of the queue and :meth:`BatchPolicy.gather` adds the queued
requests with the same key, in queue order, while the caps allow (``max_batch``
requests, ``max_batch_units`` units, and the frame under ``max_message_bytes``); the
head is always taken. With batch sizes (the runner's ``batch_sizes`` option, else the
worker's own ``batch_sizes`` declared in setup) a merge grows only to the longest run of
those requests whose units add up to one of the sizes (so a compiled worker is never
handed a batch it would pad or compile for). Requests it skips keep their places, so the
queue stays FIFO for what cannot be merged and nothing starves: the next head is the
oldest left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from ._options import RunnerOptions
from ._protocol import Kind, pack
from ._requests import Request, RequestQueue
from .worker import DistributedWorker

__all__ = ["BatchPolicy"]

_FRAME_OVERHEAD = 64  # bytes of msgpack framing per merged request, rounded up


class BatchPolicy:
    """Which requests may share a call, and how many."""

    def __init__(
        self,
        worker_cls: type[DistributedWorker],
        world_size: int,
        options: RunnerOptions,
        declared: Callable[[], tuple[int, ...] | None] = lambda: None,
        setup_kwargs: Callable[[], Mapping[str, Any]] = dict,
    ) -> None:
        self.worker_cls = worker_cls
        self.world_size = world_size
        self.options = options
        self._declared = declared
        self._setup_kwargs = setup_kwargs

    @property
    def sizes(self) -> tuple[int, ...] | None:
        """The unit totals a merge may have: the runner's ``batch_sizes`` option, else what
        the worker declared in setup (``DistributedWorker.batch_sizes``), else None (any)."""
        if self.options.batch_sizes is not None:
            return self.options.batch_sizes
        return self._declared()

    def describe(self, payload: dict[str, Any]) -> tuple[Hashable | None, int]:
        """(key, units) of a request; raises what ``check_payload``, ``batch_key`` and
        ``batch_units`` raise."""
        check = getattr(self.worker_cls, "check_payload", None)
        if check is not None:
            check(payload, self._setup_kwargs())
        batch_key = getattr(self.worker_cls, "batch_key", None)
        key = None if batch_key is None else batch_key(payload)
        if key is None:
            return None, 1
        try:
            hash(key)
        except TypeError:
            raise TypeError(
                f"{self.worker_cls.__name__}.batch_key must return a hashable value or None, "
                f"got {type(key).__name__}"
            ) from None
        units = self.worker_cls.batch_units(payload, self.world_size)  # type: ignore[attr-defined]
        if type(units) is not int or units < 1:
            raise ValueError(f"{self.worker_cls.__name__}.batch_units must return an int >= 1, got {units!r}")
        return key, units

    async def gather(self, head: Request, queue: RequestQueue) -> list[Request] | None:
        """The requests to run with ``head`` (head first), or None: ``head`` runs alone
        through ``__call__`` (its worker declares no key)."""
        if head.key is None:
            return None
        batch = [head]
        self._take(batch, queue)
        wait = self.options.batch_wait
        if wait > 0 and not self._full(batch):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while not self._full(batch) and not head.finished:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                queue.wake.clear()
                try:
                    await asyncio.wait_for(queue.wake.wait(), remaining)
                except TimeoutError:
                    break
                self._take(batch, queue)
        return batch

    def frame(self, requests: list[Request]) -> bytes:
        """One ``batch`` frame carrying each request's own ``call`` frame, encoded at submit."""
        return pack(Kind.BATCH, requests[0].id, [request.frame for request in requests])

    def _take(self, batch: list[Request], queue: RequestQueue) -> None:
        key = batch[0].key
        taken: list[Request] = []
        for request in list(queue):
            if len(batch) + len(taken) >= max(1, self.options.max_batch):
                break
            if request.finished or request.key != key or not self._fits([*batch, *taken], request):
                continue
            taken.append(request)
        sizes = self.sizes
        if sizes is not None:
            # Only candidates are chosen above: what is left out here never left the queue.
            total = sum(r.units for r in batch)
            running, keep = total, 0
            for i, request in enumerate(taken, start=1):
                running += request.units
                if running in sizes:
                    keep = i
            taken = taken[:keep]
        for request in taken:
            queue.remove(request)
            batch.append(request)

    def _full(self, batch: list[Request]) -> bool:
        """Nothing more can join ``batch``, so waiting for arrivals would only add latency."""
        if len(batch) >= max(1, self.options.max_batch):
            return True
        units = sum(r.units for r in batch)
        cap = self.options.max_batch_units
        if cap is not None and units >= cap:
            return True
        sizes = self.sizes
        return sizes is not None and units >= max(sizes)

    def _fits(self, batch: list[Request], request: Request) -> bool:
        cap = self.options.max_batch_units
        if cap is not None and sum(r.units for r in batch) + request.units > cap:
            return False
        size = sum(len(r.frame) + _FRAME_OVERHEAD for r in batch) + len(request.frame) + _FRAME_OVERHEAD
        return size <= self.options.max_message_bytes
