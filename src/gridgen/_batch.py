"""``Batch`` and ``BatchItem``: several queued requests served by one call of ``run_batch``.

A worker whose :meth:`~gridgen.DistributedWorker.batch_key` returns a key gets compatible
queued requests together, as a :class:`Batch` of :class:`BatchItem` (one per request, in
queue order), on every rank at once. Each item keeps its own request: its payload, its
stream (:meth:`BatchItem.add_streaming_result`) and its cancellation
(:meth:`Batch.cancelled`).

Hooks for the runtime (the worker process builds the batch; nothing else is needed)::

    items = [
        BatchItem(index=i, request_id=rid, payload=payload, streaming=streaming,
                  sink=functools.partial(send_item, rid))   # send_item(rid, item, image_format)
        for i, (rid, streaming, payload) in enumerate(calls)
    ]
    batch = Batch(items, is_cancelled=lambda rid: rid in cancelled_ids, group=control_group)
    results = worker.run_batch(batch)   # one value (or Future) per item, rank 0's are used

* ``sink(result, image_format)``: called on the main thread by ``item.add_streaming_result``
  with the checked format (``"jpeg"``, ``"png"`` or ``"webp"``); the runtime encodes the
  item's PIL images in it, tags the item with that request's id, and drops it when the
  request is not streaming or is already over on the host.
* ``is_cancelled(request_id) -> bool``: this rank's local view (the caller cancelled, left,
  or the request's own time limit fired). Read on the main thread while the I/O thread
  adds ids, so it must be thread-safe (a membership test on a set is).
* ``group``: the CPU (gloo) process group :meth:`Batch.cancelled` all-reduces over; ``None``
  is the default group. The check is collective whenever ``torch.distributed`` is
  initialised and the group has more than one rank, local otherwise.

A directly built batch (``Batch.of([...])``, for unit tests and scripts) keeps streamed
items in each ``item.streamed`` and is never cancelled unless ``is_cancelled`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from .images import ImageFormat

__all__ = ["Batch", "BatchItem"]


@dataclass
class BatchItem:
    """One request inside a :class:`Batch`: its payload, and where its stream items go."""

    index: int
    """Position in the batch (and in the list ``run_batch`` returns)."""
    request_id: int
    """The runner's id of this request."""
    payload: dict[str, Any]
    """The request's keywords, without ``streaming``."""
    streaming: bool
    """Whether the caller used ``runner.stream`` (items are dropped otherwise)."""
    sink: Callable[[Any, ImageFormat], None] | None = field(default=None, repr=False, compare=False)
    """Set by the runtime; ``None`` keeps stream items in :attr:`streamed`."""
    streamed: list[Any] = field(default_factory=list, repr=False, compare=False)
    """Stream items of a directly built batch (no ``sink``)."""

    def add_streaming_result(self, result: Any, image_format: str = "jpeg", as_text_event: bool = False) -> None:
        """Send ``result`` to this request's caller only, its PIL images encoded as
        ``image_format`` (see :meth:`DistributedWorker.add_streaming_result
        <gridgen.DistributedWorker.add_streaming_result>`)."""
        from .images import stream_format

        del as_text_event  # the caller picks the format with runner.stream(as_text_events=...)
        fmt = stream_format(image_format)
        if self.sink is None:
            self.streamed.append(result)
        else:
            self.sink(result, fmt)


class Batch(Sequence[BatchItem]):
    """The requests of one ``run_batch`` call, in queue order, with collective cancellation.

    Every rank gets the same batch. Index it, iterate it, and take ``len()`` as a list of
    :class:`BatchItem`. Call :meth:`cancelled` (or :meth:`should_stop`) at the same points
    on every rank, as with :meth:`DistributedWorker.should_stop
    <gridgen.DistributedWorker.should_stop>`.
    """

    def __init__(
        self,
        items: Iterable[BatchItem],
        *,
        is_cancelled: Callable[[int], bool] | None = None,
        group: Any = None,
    ) -> None:
        self._items = list(items)
        if [item.index for item in self._items] != list(range(len(self._items))):
            raise ValueError("BatchItem.index must count 0, 1, 2, ... in batch order")
        self._is_cancelled = is_cancelled
        self._group = group
        self._seen = [False] * len(self._items)

    @classmethod
    def of(
        cls,
        payloads: Iterable[Mapping[str, Any]],
        *,
        streaming: bool = False,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> Batch:
        """A batch built directly from payloads (request ids 0, 1, ...), e.g. for tests."""
        items = [
            BatchItem(index=i, request_id=i, payload=dict(payload), streaming=streaming)
            for i, payload in enumerate(payloads)
        ]
        return cls(items, is_cancelled=is_cancelled)

    @overload
    def __getitem__(self, index: int) -> BatchItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[BatchItem]: ...

    def __getitem__(self, index: int | slice) -> BatchItem | list[BatchItem]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Batch(request_ids={[item.request_id for item in self._items]})"

    def cancelled(self) -> list[bool]:
        """Which requests were cancelled, on any rank: one bool per item, in batch order.

        Collective: every rank must call it at the same points, and every rank gets the
        same list (one all-reduce of a small int32 vector over the CPU group, so the GPU
        is never synchronised). Once True for an index, it stays True.
        """
        local = [
            seen or (self._is_cancelled is not None and self._is_cancelled(item.request_id))
            for seen, item in zip(self._seen, self._items, strict=True)
        ]
        if self._collective():
            import torch
            import torch.distributed as dist

            flags = torch.tensor([int(flag) for flag in local], dtype=torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
            local = [bool(flag) for flag in flags.tolist()]
        self._seen = local
        return list(local)

    def should_stop(self) -> bool:
        """Collective, like :meth:`cancelled`: True on every rank once every request is cancelled."""
        return all(self.cancelled())

    def _collective(self) -> bool:
        if not self._items:
            return False
        import torch.distributed as dist

        return bool(
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self._group) > 1
        )
