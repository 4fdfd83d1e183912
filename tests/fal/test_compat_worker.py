"""fal behaviours on the worker side, in gridgen's own API, on two CPU ranks.

``rank_print``; async ``setup``/``__call__``/``teardown`` awaited on the main thread;
a subclass ``__init__(rank, world_size)`` keeps its device; ``add_streaming_result``'s
``image_format``; ``add_streaming_error``; the runner's ``"streaming"`` key.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gridgen import DistributedRunner, DistributedWorker

from helpers.fal_workers import CompatWorker
from helpers.runtime import LiveRunner, live


@pytest.fixture(scope="module")
def compat() -> Iterator[LiveRunner]:
    with live(CompatWorker, error_grace=2.0) as rt:
        yield rt


def stream_items(rt: LiveRunner, payload: dict[str, Any], **kwargs: Any) -> list[Any]:
    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        return [item async for item in runner.stream(payload, **kwargs)]

    return rt.run(body)


# -- rank_print ---------------------------------------------------------------------


def test_rank_print_prefixes_the_rank(capsys: pytest.CaptureFixture[str]) -> None:
    worker = DistributedWorker(rank=3, world_size=4)
    worker.rank_print("loading weights")
    worker.rank_print("shapes ok", debug=True)
    assert capsys.readouterr().out == "[rank 3] loading weights\n[debug] [rank 3] shapes ok\n"


def test_rank_print_in_async_setup_reaches_the_output_once_prefixed(
    capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A runner of its own, started in the test, so its workers inherit capfd's descriptors.
    with live(CompatWorker, setup={"marker_dir": str(tmp_path)}) as rt:
        info = rt.sync.invoke({})
    time.sleep(0.3)  # the output pump threads write asynchronously
    out = capfd.readouterr().out
    lines = out.splitlines()
    for rank in (0, 1):
        assert f"[rank {rank}] async setup on cpu" in lines
        assert f"[debug] [rank {rank}] setup details" in lines
        assert f"[rank {rank}] [rank {rank}]" not in out  # the runner's own prefix is not doubled
    # async setup, __call__ and teardown ran on the main thread, in one event loop
    assert info["setup_on_main"] and info["call_on_main"] and info["same_loop"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teardown-0", "teardown-1"]
    assert {p.read_text() for p in tmp_path.iterdir()} == {"main"}


# -- __init__ overrides, async calls ---------------------------------------------------


def test_init_override_with_rank_and_world_size_keeps_the_device(compat: LiveRunner) -> None:
    info = compat.sync.invoke({"op": "info"})
    assert info["constructed_with"] == [0, 2]
    assert info["device"] == "cpu" and info["rank"] == 0 and info["world_size"] == 2


def test_async_call_is_awaited_on_the_main_thread(compat: LiveRunner) -> None:
    info = compat.sync.invoke({"op": "info"})
    assert info["call_on_main"] is True and info["same_loop"] is True


def test_async_call_can_await_between_stream_items(compat: LiveRunner) -> None:
    items = stream_items(compat, {"op": "sleep", "items": 3, "delay": 0.02})
    assert items == [{"i": 0}, {"i": 1}, {"i": 2}, {"slept": True}]


def test_an_async_call_that_raises_is_a_worker_error(compat: LiveRunner) -> None:
    from gridgen import WorkerError

    with pytest.raises(WorkerError) as info:
        compat.sync.invoke({"op": "items_then_raise", "on_rank": 1, "message": "async boom"})
    assert info.value.rank == 1 and info.value.remote_message == "async boom"
    assert compat.sync.invoke({"op": "value", "value": 1}) == 1


# -- the "streaming" key ------------------------------------------------------------------


def test_streaming_key_is_set_by_the_runner_and_overrides_the_callers(compat: LiveRunner) -> None:
    assert compat.sync.invoke({"op": "info", "streaming": True})["streaming"] is False
    assert compat.sync.invoke({"op": "info"})["streaming"] is False
    *_, last = stream_items(compat, {"op": "info", "streaming": False})
    assert last["streaming"] is True
    assert "streaming" not in last["payload_keys"]


# -- add_streaming_result(image_format=...) -------------------------------------------------


def _image_from_data_url(url: str) -> Image.Image:
    data = url.partition(",")[2]
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_streamed_pil_images_are_jpeg_by_default(compat: LiveRunner) -> None:
    item, _result = stream_items(compat, {"op": "image", "on_rank": 0})[-2:]
    assert isinstance(item["image"], Image.Image)
    assert item["image"].format == "JPEG" and item["image"].size == (24, 16)
    assert item["nested"][0].format == "JPEG"


@pytest.mark.parametrize(("fmt", "pil_name"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
def test_image_format_picks_the_encoding_of_the_items_images(compat: LiveRunner, fmt: str, pil_name: str) -> None:
    events = stream_items(compat, {"op": "image", "image_format": fmt}, as_text_events=True)
    import json

    first = json.loads(events[0].removeprefix(b"data: "))
    image = first["image"]
    assert image["content_type"] == f"image/{fmt}"
    assert image["url"].startswith(f"data:image/{fmt};base64,")
    assert (image["width"], image["height"]) == (24, 16)
    assert _image_from_data_url(image["url"]).format == pil_name
    assert first["nested"][0]["content_type"] == f"image/{fmt}"


def test_a_bad_image_format_is_a_clear_error(compat: LiveRunner) -> None:
    from gridgen import WorkerError

    with pytest.raises(WorkerError, match="image_format") as info:
        compat.sync.invoke({"op": "image", "image_format": "gif"})
    assert info.value.remote_type == "ValueError"


# -- add_streaming_error ----------------------------------------------------------------------


def test_add_streaming_error_sends_an_error_item_and_the_stream_goes_on(compat: LiveRunner) -> None:
    items = stream_items(compat, {"op": "stream_error"})
    assert items[0] == {"n": 1}
    assert items[1] == {"error": {"type": "ValueError", "message": "frame 2 could not be decoded", "rank": 0}}
    assert items[2:] == [{"n": 3}, {"done": True}]


def test_add_streaming_error_as_a_text_event(compat: LiveRunner) -> None:
    events = stream_items(compat, {"op": "stream_error"}, as_text_events=True)
    assert events[1] == b'data: {"error":{"type":"ValueError","message":"frame 2 could not be decoded","rank":0}}\n\n'
    assert events[-1] == b'data: {"done":true}\n\n'


def test_add_streaming_error_outside_a_runner_is_kept_like_items() -> None:
    worker = DistributedWorker()
    worker.add_streaming_error("plain message")
    assert worker.streamed == [{"error": {"type": "Error", "message": "plain message", "rank": 0}}]
