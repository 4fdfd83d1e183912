"""Batch and BatchItem: per-request streams, sticky collective cancellation; the worker defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gridgen import Batch, BatchItem, DistributedWorker

from helpers.gloo import on_ranks


def test_items_stream_to_their_own_request() -> None:
    sent: list[tuple[int, Any]] = []
    items = [
        BatchItem(index=i, request_id=10 + i, payload={"n": i}, streaming=True,
                  sink=lambda item, fmt, rid=10 + i: sent.append((rid, item)))
        for i in range(3)
    ]
    batch = Batch(items)
    batch[2].add_streaming_result("c")
    batch[0].add_streaming_result({"a": 1}, as_text_event=True)
    assert sent == [(12, "c"), (10, {"a": 1})]
    assert all(item.streamed == [] for item in batch)  # a sink means nothing is kept


def test_the_image_format_reaches_the_sink_checked_jpeg_by_default() -> None:
    sent: list[Any] = []
    item = BatchItem(index=0, request_id=1, payload={}, streaming=True,
                     sink=lambda result, fmt: sent.append((result, fmt)))
    item.add_streaming_result({"step": 1})
    item.add_streaming_result({"step": 2}, image_format="JPG")
    item.add_streaming_result({"step": 3}, "PNG", as_text_event=True)
    assert sent == [({"step": 1}, "jpeg"), ({"step": 2}, "jpeg"), ({"step": 3}, "png")]
    with pytest.raises(ValueError, match="image_format must be 'jpeg', 'png' or 'webp', not 'gif'"):
        item.add_streaming_result({"step": 4}, image_format="gif")
    assert len(sent) == 3  # nothing sent for the bad one


def test_a_directly_built_batch_keeps_items_per_request() -> None:
    batch = Batch.of([{"prompt": "a"}, {"prompt": "b"}], streaming=True)
    assert len(batch) == 2 and [item.request_id for item in batch] == [0, 1]
    assert [item.payload for item in batch] == [{"prompt": "a"}, {"prompt": "b"}]
    assert list(batch) == batch[:]
    batch[1].add_streaming_result(1)
    batch[1].add_streaming_result(2)
    assert batch[0].streamed == [] and batch[1].streamed == [1, 2]
    assert "request_ids=[0, 1]" in repr(batch)


def test_indices_must_follow_batch_order() -> None:
    with pytest.raises(ValueError, match="index"):
        Batch([BatchItem(index=1, request_id=1, payload={}, streaming=False)])


def test_local_cancellation_is_sticky_and_should_stop_needs_all() -> None:
    cancelled: set[int] = set()
    batch = Batch.of([{}, {}, {}], is_cancelled=cancelled.__contains__)
    assert batch.cancelled() == [False, False, False]
    cancelled.add(1)
    assert batch.cancelled() == [False, True, False]
    cancelled.clear()  # the runtime forgets the id: the batch does not
    assert batch.cancelled() == [False, True, False]
    assert not batch.should_stop()
    cancelled.update({0, 2})
    assert batch.should_stop()
    assert Batch.of([{}]).cancelled() == [False]  # no is_cancelled: never cancelled


def cancel_on_ranks(rank: int) -> list[list[bool]]:
    """Rank 0 cancels request 0, rank 1 request 2, after the first check; then both forget."""
    local: set[int] = set()
    batch = Batch.of([{}, {}, {}, {}], is_cancelled=local.__contains__)
    seen = [batch.cancelled()]
    local.add(0 if rank == 0 else 2)
    seen.append(batch.cancelled())
    local.clear()
    seen.append(batch.cancelled())
    local.update({1, 3} if rank == 1 else set())
    seen.append(batch.cancelled())
    seen.append([batch.should_stop()])
    return seen


def test_cancelled_is_collective_over_two_gloo_ranks(tmp_path: Path) -> None:
    zero, one = on_ranks(cancel_on_ranks, tmp_path)
    assert zero == one, "every rank must get the same answer"
    assert zero == [
        [False, False, False, False],
        [True, False, True, False],  # each rank saw one cancel; both learn both
        [True, False, True, False],  # and keep them
        [True, True, True, True],
        [True],
    ]


class Plain(DistributedWorker):
    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        return payload


def test_worker_defaults_never_merge() -> None:
    assert Plain.batch_key({"prompt": "a"}) is None
    assert Plain.batch_units({"prompt": "a"}, 4) == 1
    with pytest.raises(NotImplementedError, match=r"Plain\.batch_key .*run_batch"):
        Plain().run_batch(Batch.of([{"x": 1}]))
