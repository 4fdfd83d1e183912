"""stream(): items arrive as produced, tagged to their request, then the final result."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gridgen import DistributedRunner, StreamResult

from helpers.runtime import LiveRunner


def test_stream_yields_items_then_the_result(probe: LiveRunner) -> None:
    items = list(probe.sync.stream({"op": "echo", "message": "m", "items": 3, "on_rank": 0}))
    assert items[:3] == [{"i": 0, "rank": 0}, {"i": 1, "rank": 0}, {"i": 2, "rank": 0}]
    assert items[3]["echo"] == "m"
    assert len(items) == 4


def test_items_from_every_rank_arrive(probe: LiveRunner) -> None:
    items = list(probe.sync.stream({"op": "echo", "items": 2}))
    streamed = items[:-1]
    assert sorted((x["rank"], x["i"]) for x in streamed) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # per-rank order is kept
    assert [x["i"] for x in streamed if x["rank"] == 1] == [0, 1]


def test_text_events_are_sse_bytes(probe: LiveRunner) -> None:
    from PIL import Image

    image = Image.new("RGB", (2, 2), (255, 0, 0))
    events = list(probe.sync.stream({"op": "value", "value": {"image": image}}, as_text_events=True))
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, bytes) and event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = json.loads(event[len(b"data: "):])
    # fal's shape: the seed's client reads event["image"]["url"]
    assert body["image"]["url"].startswith("data:image/png;base64,")
    assert body["image"]["content_type"] == "image/png"
    assert (body["image"]["width"], body["image"]["height"]) == (2, 2)


def test_invoke_drops_stream_items(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> list[Any]:
        handle = runner.submit({"op": "echo", "message": "quiet", "items": 5})  # not streaming
        await handle.result()
        return [event async for event in handle.updates()]

    events = probe.run(scenario)
    assert len(events) == 1  # no StreamItem reached the request, only its result
    assert isinstance(events[0], StreamResult) and events[0].value["echo"] == "quiet"


def test_no_item_leaks_into_the_next_request(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> tuple[list[Any], list[Any]]:
        first = runner.stream({"op": "steps", "steps": 50, "delay": 0.02})
        got_first = [await first.__anext__()]
        await first.aclose()  # leave early: cancels the request
        second = [item async for item in runner.stream({"op": "echo", "items": 2, "on_rank": 1, "message": "two"})]
        return got_first, second

    first, second = probe.run(scenario)
    assert first == [{"step": 1}]
    assert second[:-1] == [{"i": 0, "rank": 1}, {"i": 1, "rank": 1}]
    assert second[-1]["echo"] == "two"


def test_items_arrive_before_the_request_ends(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        stamps = []
        async for _item in runner.stream({"op": "steps", "steps": 5, "delay": 0.2}):
            stamps.append(loop.time() - start)
        return stamps

    stamps = probe.run(scenario)
    assert len(stamps) == 6
    # the first step's item arrives long before the 1 s request ends
    assert stamps[0] < 0.7 and stamps[-1] >= 0.9
