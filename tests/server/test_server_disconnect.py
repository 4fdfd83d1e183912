"""A client that goes away cancels its request on every rank: the next request starts at once.

These run against a live uvicorn server on a real socket: closing the connection is
what a browser's abort or a crashed client does.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from helpers.server import SMALL, LiveServer, sse_events

LONG: dict[str, Any] = {"prompt": "a long one", "width": 512, "height": 512, "num_inference_steps": 40, "preview_every": 1, "seed": 1}
"""About 0.3 s per step on two CPU ranks: some 12 s if it were not cancelled."""


def test_closing_the_stream_cancels_the_request(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        with client.stream("POST", "/stream", json=LONG) as response:
            events = sse_events(response.iter_lines())
            assert next(events)[0] == "queued"
            name, first = next(events)
            first_at = time.monotonic()
            assert (name, first["step"]) == ("progress", 1)
            name, second = next(events)
            step_seconds = time.monotonic() - first_at
            assert (name, second["step"]) == ("progress", 2)
        # leaving the block closed the connection mid-stream
        closed_at = time.monotonic()
        response = client.post("/generate", json={**SMALL, "seed": 2})
        next_done = time.monotonic() - closed_at
    assert response.status_code == 200
    assert response.json()["seeds"] == [2, 3]
    remaining = (LONG["num_inference_steps"] - 2) * step_seconds
    # the next request waited at most about one step of the cancelled one, not the rest of it
    assert next_done < max(3.0, 4 * step_seconds), (next_done, step_seconds)
    assert next_done < remaining / 2, (next_done, remaining)
    assert sdxl_server.runner.queue_size == 0


def test_a_generate_client_that_gives_up_cancels_its_request(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        started = time.monotonic()
        try:
            client.post("/generate", json=LONG, timeout=httpx.Timeout(30.0, read=2.0))
        except httpx.ReadTimeout:
            pass  # the client closes the connection
        else:
            raise AssertionError("the long request finished within 2 s: make it longer")
        gave_up = time.monotonic()
        response = client.post("/generate", json={**SMALL, "seed": 4})
        next_done = time.monotonic() - gave_up
    assert response.status_code == 200
    assert response.json()["seeds"] == [4, 5]
    assert gave_up - started < 3.0
    assert next_done < 4.0, next_done  # the long one alone needs some 12 s
