"""A full queue answers 503 with Retry-After at once, on /generate and /stream; nothing is queued."""

from __future__ import annotations

import asyncio

import httpx

from helpers.server import LiveServer


def test_full_queue_is_503_with_retry_after(probe_server: LiveServer) -> None:
    runner = probe_server.runner

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], int, float]:
        async with httpx.AsyncClient(base_url=probe_server.url, timeout=30) as client:
            loop = asyncio.get_running_loop()
            # One request runs (about 1.5 s), two wait: the queue (max_queue=2) is full.
            accepted = [
                asyncio.create_task(client.post("/generate", json={"op": "steps", "steps": 30, "delay": 0.05}))
            ]
            while runner._current is None:
                await asyncio.sleep(0.01)
            accepted += [asyncio.create_task(client.post("/generate", json={"op": "echo"})) for _ in range(2)]
            while runner.queue_size < 2:
                await asyncio.sleep(0.01)
            started = loop.time()
            refused = [
                await client.post("/generate", json={"op": "echo"}),
                await client.post("/stream", json={"op": "echo"}),
            ]
            answered_in = loop.time() - started
            queued_after = runner.queue_size
            return await asyncio.gather(*accepted), refused, queued_after, answered_in

    accepted, refused, queued_after, answered_in = asyncio.run(scenario())
    for response in refused:
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["type"] == "QueueFull"
        assert "max_queue=2" in error["message"]
    assert answered_in < 1.0  # refused at once, not after waiting for a slot
    assert queued_after == 2  # the refused requests were not queued
    assert [r.status_code for r in accepted] == [200, 200, 200]
    assert accepted[0].json()["completed"] == 30
    with httpx.Client(base_url=probe_server.url) as client:
        assert client.get("/ready").json()["queue_size"] == 0

