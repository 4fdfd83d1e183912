"""Merged SDXL requests through a 2-rank runner (issue 12): each request keeps its own result,
stream, previews, cancellation and time limit.

These need the runtime side of batching (``DistributedRunner(max_batch=...)``, ``batch_key``
called at submit, dispatch through ``run_batch``). Requests submitted in one go, without awaiting in between, are all
queued before the dispatcher looks, so compatible ones are merged. Merging is observed
through the timings: requests served by one call report the same ``denoise`` figure (the
shared phase), requests served apart do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from gridgen import DistributedRunner, RequestCancelled, RequestTimeout
from gridgen.sdxl import SDXLWorker

from helpers.runtime import LiveRunner, live
from helpers.sdxl import SMALL, A, B, C, arrays, close

LONG = {**SMALL, "width": 256, "height": 256, "num_inference_steps": 150, "preview_every": 1}
"""Many seconds on two CPU ranks, so a cancel or a time limit lands mid-run."""


@pytest.fixture(scope="module")
def merging(tiny_cache: str) -> Iterator[LiveRunner]:
    with live(SDXLWorker, setup={"model": "tiny"}, max_batch=8) as rt:
        yield rt


def _shared(results: list[dict[str, Any]]) -> set[float]:
    return {result["timings"]["denoise"] for result in results}


def test_merged_requests_each_get_their_own_result(merging: LiveRunner, direct: SDXLWorker) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        handles = [runner.submit(payload) for payload in (A, B, C)]
        return [await handle.result() for handle in handles]

    a, b, c = merging.run(body)
    assert len(_shared([a, b, c])) == 1, "the three requests were not merged"
    assert [r["seeds"] for r in (a, b, c)] == [[5, 6], [70], [5, 6, 7]]
    assert a["grid"].size == (128, 64) and "grid" not in b and "grid" not in c
    assert [image.format for image in b["images"]] == ["JPEG"]
    # the same images as each request alone, on one rank: neither neighbours nor W matter
    close(arrays(a), arrays(direct(**A)))
    close(arrays(b), arrays(direct(**B)), jpeg=True)
    close(arrays(c), arrays(direct(**C)))


def test_each_stream_carries_only_its_own_previews(merging: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[list[Any]]:
        first = runner.submit({**A, "preview_every": 2}, streaming=True)
        second = runner.submit({**C, "preview_every": 1}, streaming=True)
        quiet = runner.submit({**B, "preview_every": 1})  # invoke: no items at all

        async def drain(handle: Any) -> list[Any]:
            return [item async for item in handle.events()]

        streams = await asyncio.gather(drain(first), drain(second))
        return [*streams, [await quiet.result()]]

    first, second, quiet = merging.run(body)
    *first_events, first_result = first
    *second_events, second_result = second
    assert len(_shared([first_result, second_result, quiet[0]])) == 1
    assert [e["step"] for e in first_events] == [2, 4]
    assert [e["step"] for e in second_events] == [1, 2, 3, 4]
    assert {e["preview_image"].size for e in first_events} == {(32, 16)}  # A's 2 images
    assert {e["preview_image"].size for e in second_events} == {(32, 32)}  # C's 3 images
    assert first_result["seeds"] == [5, 6] and second_result["seeds"] == [5, 6, 7]


def test_the_same_request_alone_and_inside_a_batch(merging: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[Any, list[Any]]:
        alone = await runner.invoke(C)
        handles = [runner.submit(payload) for payload in (A, C, B)]
        return alone, [await handle.result() for handle in handles]

    alone, merged = merging.run(body)
    assert len(_shared(merged)) == 1
    close(arrays(merged[1]), arrays(alone))


def test_cancelling_one_request_of_a_batch(merging: LiveRunner) -> None:
    pids = merging.runner.pids

    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        doomed = runner.submit({**LONG, "num_images": 1, "seed": 1}, streaming=True)
        others = [
            runner.submit({**LONG, "num_images": 1, "seed": 2, "preview_every": 0}),
            runner.submit({**LONG, "num_images": 2, "seed": 3, "preview_every": 0}),
        ]
        async for _ in doomed.events():
            doomed.cancel()  # after the first preview: mid-run, the batch is underway
            break
        outcome: list[Any] = []
        try:
            outcome.append(await doomed.result())
        except RequestCancelled as exc:
            outcome.append(exc)
        outcome += [await handle.result() for handle in others]
        return outcome

    cancelled, one, two = merging.run(body, timeout=100)
    assert isinstance(cancelled, RequestCancelled)
    assert one["seeds"] == [2] and two["seeds"] == [3, 4]
    assert len(_shared([one, two])) == 1
    assert merging.runner.pids == pids, "a cancel inside a batch must not rebuild the group"


def test_an_invalid_request_is_rejected_before_merging(merging: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[str, list[Any]]:
        first = runner.submit(A)
        try:
            runner.submit({**B, "width": 100})
        except Exception as exc:  # the contract: batch_key's error, raised to this caller
            error = str(exc)
        else:
            error = "accepted"
        last = runner.submit(C)
        return error, [await first.result(), await last.result()]

    error, (a, c) = merging.run(body)
    assert "width" in error and "multiple of 8" in error
    assert a["seeds"] == [5, 6] and c["seeds"] == [5, 6, 7]
    assert len(_shared([a, c])) == 1


def test_a_time_limit_applies_to_its_request_only(merging: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        short = runner.submit({**LONG, "seed": 1, "preview_every": 0}, timeout=2.0)
        patient = runner.submit({**LONG, "seed": 2, "preview_every": 0})
        outcome: list[Any] = []
        try:
            outcome.append(await short.result())
        except RequestTimeout as exc:
            outcome.append(exc)
        outcome.append(await patient.result())
        return outcome

    short, patient = merging.run(body, timeout=100)
    assert isinstance(short, RequestTimeout)
    assert patient["seeds"] == [2, 3]


def test_requests_of_other_sizes_are_not_merged_and_fifo_holds(merging: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[Any], list[int]]:
        finished: list[int] = []
        payloads = [A, {**B, "width": 128}, C]
        handles = [runner.submit(payload) for payload in payloads]

        async def wait(i: int) -> Any:
            result = await handles[i].result()
            finished.append(i)
            return result

        results = await asyncio.gather(*(wait(i) for i in range(3)))
        return list(results), finished

    (a, wide, c), finished = merging.run(body)
    assert a["timings"]["denoise"] == c["timings"]["denoise"]  # merged over the other key
    assert wide["timings"]["denoise"] != a["timings"]["denoise"]
    assert wide["width"] == 128
    assert finished.index(1) > max(finished.index(0), finished.index(2))
