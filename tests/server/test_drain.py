"""The graceful drain of ``gridgen serve`` (issue 25) and its exit status (issue 26, item 2).

Each test owns one real server process (one CPU rank, the tiny model), since each ends it.
A "long" request is a 256x256 one of many steps, streamed so that the test knows when it
runs; the signal goes out once its first progress event arrived.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.serve import ServeProcess
from helpers.server import sse_events

LONG: dict[str, Any] = {"prompt": "a long one", "width": 256, "height": 256, "num_inference_steps": 20,
                        "num_images": 1, "preview_every": 1, "image_format": "jpeg"}


@pytest.fixture
def serve(tiny_cache: str, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "serve.log", "--drain-timeout", "120", workers=1)
    try:
        yield process.wait_ready()
    finally:
        process.stop()


class LongStream:
    """A ``/stream`` of LONG in a thread: ``running`` is set at its first progress event."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running = threading.Event()
        self.events: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.running.wait(120), "the long request did not start"

    def _run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/stream", json=LONG, timeout=120) as response:
                self.status = response.status_code
                for event in sse_events(response.iter_lines()):
                    self.events.append(event)
                    if event[0] == "progress":
                        self.running.set()
        except BaseException as exc:  # the test asserts on it
            self.error = exc
            self.running.set()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive()


def test_sigterm_lets_the_running_request_finish_refuses_new_ones_and_exits_0(serve: ServeProcess) -> None:
    long = LongStream(serve.url)
    serve.signal(signal.SIGTERM)
    time.sleep(0.2)  # the signal handler runs between two event-loop turns
    ready = httpx.get(f"{serve.url}/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["state"] == "draining"
    refused = httpx.post(f"{serve.url}/generate", json={**LONG, "num_inference_steps": 2}, timeout=10,
                         headers={"x-request-id": "late-1"})
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["error"]["type"] == "RunnerClosed" and "draining" in body["detail"]
    assert body["request_id"] == body["error"]["request_id"] == "late-1"
    assert serve.process.poll() is None  # still serving the long request
    long.join(120)
    assert long.error is None and long.status == 200
    assert long.events[-1][0] == "result", long.events[-1]
    assert serve.wait(60) == 0, serve.log()[-3000:]
    log = serve.log()
    assert "draining: 1 request(s) to finish" in log and "drained and stopped" in log


def test_a_second_signal_stops_at_once(serve: ServeProcess) -> None:
    long = LongStream(serve.url)
    serve.signal(signal.SIGINT)
    time.sleep(0.3)
    assert httpx.get(f"{serve.url}/ready", timeout=10).json()["state"] == "draining"
    started = time.monotonic()
    serve.signal(signal.SIGINT)
    assert serve.wait(30) == 130, serve.log()[-3000:]
    stopped_in = time.monotonic() - started
    long.join(30)
    assert not any(name == "result" for name, _ in long.events)  # cut short, not finished
    assert stopped_in < 10, f"took {stopped_in:.1f}s to stop"
    assert "stopping now (second signal)" in serve.log()
