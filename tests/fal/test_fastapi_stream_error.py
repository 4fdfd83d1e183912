"""A worker error in the middle of ``StreamingResponse(runner.stream(..., as_text_events=True))``.

The client gets the progress events, then an error event, and a complete response (the
chunked body ends properly); the app keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.fal import read_sse
from helpers.fal_error_app import create_app
from helpers.server import LiveServer


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(create_app()) as live_server:
        yield live_server


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_the_client_gets_the_error_event_and_a_complete_response(server: LiveServer, failing_rank: int) -> None:
    with server.client() as client:
        response, events = read_sse(client, "/stream", {"items": 3, "on_rank": failing_rank})
    assert response.status_code == 200
    assert response.is_closed and response.num_bytes_downloaded > 0
    assert events == [
        {"step": 1},
        {"step": 2},
        {"step": 3},
        {"error": {"type": "ValueError", "message": "out of memory at step 4", "rank": failing_rank}},
    ]


def test_the_app_serves_the_next_requests(server: LiveServer) -> None:
    with server.client() as client:
        read_sse(client, "/stream", {"items": 1})
        _, events = read_sse(client, "/stream", {"op": "items", "items": 2, "on_rank": 0})
        plain = client.post("/", json={"message": "still here"})
    assert events == [{"i": 0, "rank": 0}, {"i": 1, "rank": 0}, {"rank": 0}]
    assert plain.status_code == 200 and plain.json() == "still here"
