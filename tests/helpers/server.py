"""Helpers for the HTTP service tests (a plain module: conftest names collide between folders)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from PIL import Image
from pydantic import BaseModel

SMALL: dict[str, Any] = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "num_inference_steps": 2}
"""The request size most tests use: 64x64, 2 steps (tens of milliseconds on two CPU ranks)."""


class ProbeRequest(BaseModel):
    """A small request model for apps over ``gridgen.testing.ProbeWorker``."""

    op: str = "echo"
    message: str = ""
    on_rank: int | None = None
    steps: int = 1
    delay: float = 0.0
    items: int = 0


class LiveServer:
    """uvicorn serving ``app`` in a background thread on 127.0.0.1, on a free port.

    The app's lifespan (which starts the runner) runs in the server's own event loop.
    A real socket matters: httpx's ASGITransport does not deliver client disconnects
    the way a closed TCP connection does.
    """

    def __init__(self, app: Any, runner: Any = None, startup_timeout: float = 150.0) -> None:
        self.runner = runner  # the app's runner, for tests that look at it directly
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.startup_timeout = startup_timeout
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (the runner did not start?)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {self.startup_timeout}s")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        wait_ready(self.url, deadline - time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 60.0)
        return httpx.Client(base_url=self.url, **kwargs)


def wait_ready(url: str, timeout: float = 150.0) -> None:
    """Poll ``GET /ready`` until 200: the app starts its runner in the background."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/ready", timeout=10)
        if response.status_code == 404:
            return  # not a create_app app (the seed example): its lifespan started the runner
        state = response.json()
        if state["ready"]:
            return
        if state["state"] == "failed":
            raise RuntimeError(f"the runner did not start: {state.get('error')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {timeout}s: {state}")
        time.sleep(0.05)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event name, parsed JSON data)`` from a ``text/event-stream`` body's lines."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


def stream_events(client: httpx.Client, body: dict[str, Any], path: str = "/stream") -> list[tuple[str, Any]]:
    """POST ``body`` to ``path`` and read every event (asserting a 200 event stream)."""
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response.iter_lines()))


def decode_data_url(url: str, mime: str = "image/png") -> Image.Image:
    """The image in a ``data:<mime>;base64,`` URL (asserting the MIME type)."""
    prefix = f"data:{mime};base64,"
    assert url.startswith(prefix), url[:40]
    image = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):], validate=True)))
    image.load()
    return image
