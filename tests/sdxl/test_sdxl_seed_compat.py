"""The seed's worker runs on gridgen with only its import line changed (tests/helpers/seed_app.py).

Plays ``ExampleDistributedApp``: ``setup`` (start + warm-up invoke), ``run`` (invoke) and
``stream`` (``as_text_events=True``, the bytes a ``StreamingResponse`` would send).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

from PIL import Image

from helpers.seed_app import (  # type: ignore[import-not-found]
    DistributedRunner,
    ExampleDistributedWorker,
    ExampleRequest,
)

SIZE: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 6}


def _data_url_image(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_seed_app_flow_on_two_cpu_ranks(tiny_cache: str) -> None:
    # The runner gives each CPU rank its share of the cores, so the seed's worker (which
    # sets no thread count) does not oversubscribe the machine.
    async def app() -> tuple[Any, Any, list[bytes]]:
        runner = DistributedRunner(worker_cls=ExampleDistributedWorker, world_size=2, device="cpu")
        await runner.start()
        try:
            warmup_result = await runner.invoke(
                ExampleRequest(prompt="a cat wearing a hat", **SIZE).model_dump()  # the seed: .dict()
            )
            assert "image" in warmup_result, "Warm-up failed, no image returned from the worker"
            request = ExampleRequest(prompt="A serene mountain landscape at sunset", **SIZE)
            result = await runner.invoke(request.model_dump())
            events = [chunk async for chunk in runner.stream(request.model_dump(), as_text_events=True)]
            return warmup_result, result, events
        finally:
            await runner.stop()

    warmup, result, events = asyncio.run(asyncio.wait_for(app(), 100))

    # run(): rank 0 returns the grid of both ranks' images (1 column: floor(sqrt(2)) per row)
    assert isinstance(result["image"], Image.Image)
    assert result["image"].size == (64, 128)
    assert warmup["image"].size == (64, 128)

    # stream(): server-sent events, previews at steps 0 and 5, then the final result
    assert len(events) == 3
    for chunk in events:
        assert isinstance(chunk, bytes)
        assert chunk.startswith(b"data: {") and chunk.endswith(b"}\n\n")
        body = json.loads(chunk[len(b"data: ") : -2])
        assert set(body) == {"image"}
        image = body["image"]  # fal's shape: {"url", "content_type", "width", "height"}
        assert (image["width"], image["height"]) == (64, 128)
        assert _data_url_image(image["url"]).size == (64, 128)
