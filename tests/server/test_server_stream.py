"""POST /stream: server-sent events queued -> progress (with previews) -> result, in order."""

from __future__ import annotations

import threading
import time

from helpers.server import SMALL, LiveServer, decode_data_url, sse_events, stream_events


def test_events_arrive_in_order_with_their_fields(sdxl_server: LiveServer) -> None:
    request = {**SMALL, "num_inference_steps": 3, "preview_every": 1, "seed": 3}
    with sdxl_server.client() as client:
        events = stream_events(client, request)
        plain = client.post("/generate", json=request).json()
    names = [name for name, _ in events]
    assert names == ["queued", "progress", "progress", "progress", "result"]

    queued = events[0][1]
    assert queued["position"] == 0
    assert isinstance(queued["request_id"], int)

    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3]
    assert {p["total_steps"] for p in progress} == {3}
    assert [p["progress"] for p in progress] == [1 / 3, 2 / 3, 1.0]
    for p in progress:
        width, height = decode_data_url(p["preview_image"], "image/jpeg").size
        assert width == 2 * height and 8 <= height <= 64  # two cheap previews side by side

    result = events[-1][1]
    assert result["seeds"] == [3, 4]
    assert decode_data_url(result["grid"]).size == (128, 64)
    assert result["grid"] == plain["grid"]  # streaming does not change the images
    assert set(result["timings"]) == {"setup", "denoise", "decode", "gather", "encode", "total"}


def test_preview_every_sets_the_event_count(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        every_two = stream_events(client, {**SMALL, "num_inference_steps": 4, "preview_every": 2})
        none = stream_events(client, {**SMALL, "preview_every": 0})
    assert [d["step"] for n, d in every_two if n == "progress"] == [2, 4]
    assert [n for n, _ in none] == ["queued", "result"]


def test_queued_event_reports_the_position(probe_server: LiveServer) -> None:
    # One request runs for about a second; two more wait: the second waiter has one ahead.
    results: dict[str, int] = {}

    def post(name: str, body: dict[str, object]) -> None:
        with probe_server.client() as client:
            results[name] = client.post("/generate", json=body).status_code

    blocker = threading.Thread(target=post, args=("blocker", {"op": "steps", "steps": 20, "delay": 0.05}))
    blocker.start()
    _wait_until(lambda: probe_server.runner.queue_size == 0 and _running(probe_server))
    waiter = threading.Thread(target=post, args=("waiter", {"op": "echo"}))
    waiter.start()
    _wait_until(lambda: probe_server.runner.queue_size == 1)
    with probe_server.client() as client, client.stream("POST", "/stream", json={"op": "echo", "items": 2}) as response:
        events = list(sse_events(response.iter_lines()))
    blocker.join()
    waiter.join()
    assert results == {"blocker": 200, "waiter": 200}
    assert events[0] == ("queued", {"request_id": events[0][1]["request_id"], "position": 1})
    assert [name for name, _ in events] == ["queued", "progress", "progress", "progress", "progress", "result"]
    assert events[-1][1]["echo"] == ""


def _running(server: LiveServer) -> bool:
    return server.runner._current is not None


def _wait_until(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_framing_is_fastapis_own_with_keepalive_pings_while_a_step_is_slow() -> None:
    import subprocess
    import sys

    from gridgen import DistributedRunner
    from gridgen.server import create_app
    from gridgen.testing import ProbeWorker

    from helpers.server import ProbeRequest

    imported = subprocess.run(
        [sys.executable, "-c", "import sys, gridgen.server; print('sse_starlette' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )
    assert imported.stdout.strip() == "False"
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    app = create_app(runner, request_model=ProbeRequest, stream_ping=0.1)
    with LiveServer(app, runner) as server, server.client() as client:
        body = {"op": "steps", "steps": 2, "delay": 0.5}
        with client.stream("POST", "/stream", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            raw = response.read().decode()
    assert raw.startswith('event: queued\ndata: {"request_id":')
    assert ": ping\n\n" in raw  # fastapi.sse's keep-alive comment, every 0.1 s of silence
    names = [name for name, _ in sse_events(iter(raw.splitlines()))]
    assert names[0] == "queued" and names[-1] == "result"
