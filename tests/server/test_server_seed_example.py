"""examples/seed_app_fastapi.py: the seed's app on gridgen + FastAPI serves / and /stream."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.server import LiveServer, decode_data_url, sse_events

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def seed_example(tiny_cache: str) -> Iterator[LiveServer]:
    patch = pytest.MonkeyPatch()
    # Read by the example when imported, here and in its worker processes (spawned later).
    patch.setenv("GRIDGEN_MODEL", "tiny")
    patch.setenv("GRIDGEN_SIZE", "64")
    patch.setenv("GRIDGEN_STEPS", "6")
    patch.syspath_prepend(str(EXAMPLES))  # spawned workers import the worker class from it
    sys.modules.pop("seed_app_fastapi", None)
    module: Any = importlib.import_module("seed_app_fastapi")
    try:
        with LiveServer(module.create_app(world_size=2, device="cpu")) as server:
            yield server
    finally:
        sys.modules.pop("seed_app_fastapi", None)
        patch.undo()


def test_run_endpoint_returns_the_grid(seed_example: LiveServer) -> None:
    with seed_example.client() as client:
        response = client.post("/", json={"prompt": "a cat wearing a hat"})
    assert response.status_code == 200
    assert set(response.json()) == {"image"}
    grid = decode_data_url(response.json()["image"])
    assert grid.size == (64, 128)  # two 64x64 images, one per rank


def test_stream_endpoint_sends_the_seed_events(seed_example: LiveServer) -> None:
    with seed_example.client() as client, client.stream("POST", "/stream", json={"prompt": "x"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    # unnamed data events: previews at steps 0 and 5, then the result; images in fal's shape,
    # streamed previews JPEG (add_streaming_result's default), the returned grid PNG
    assert [name for name, _ in events] == ["message"] * 3
    for (_, data), mime in zip(events, ["image/jpeg", "image/jpeg", "image/png"], strict=True):
        assert set(data) == {"image"}
        image = data["image"]
        assert image["content_type"] == mime and (image["width"], image["height"]) == (64, 128)
        assert decode_data_url(image["url"], mime).size == (64, 128)
