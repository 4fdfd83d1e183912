"""Workers for the fal-compatibility tests, written the way fal.distributed users write them.

``CompatWorker`` overrides ``__init__(self, rank=0, world_size=1)``, and its ``setup``,
``__call__`` and ``teardown`` are coroutines; each request's ``op`` picks what it does.
``FalWorker`` is the same idea on ``gridgen.fal.DistributedWorker``.
A module of its own, importable by name, because spawned workers import classes by reference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gridgen import DistributedWorker, fal


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Box:
    name: str
    size: tuple[int, int]
    color: Color = Color.RED


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def small_image(color: tuple[int, int, int] = (250, 10, 10), size: tuple[int, int] = (24, 16)) -> Any:
    from PIL import Image

    return Image.new("RGB", size, color)


async def _ops(worker: Any, streaming: bool, op: str, payload: dict[str, Any]) -> Any:
    """The ops both workers share."""
    import numpy as np
    import torch
    import torch.distributed as dist

    on_rank = payload.get("on_rank")
    mine = on_rank is None or on_rank == worker.rank
    if op == "value":
        return payload.get("value")
    if op == "types":
        return {key: [type(value).__name__, value] for key, value in payload.items()}
    if op == "values":
        return {
            "path": Path("/data/out") / "image.png",
            "when": datetime(2026, 12, 3, 7, 0, 5, tzinfo=timezone.utc),
            "tags": {"b", "a"},
            "box": Box("crop", (3, 4), Color.BLUE),
            "color": Color.RED,
            "f32": np.float32(0.5),
            "i64": np.int64(-7),
            "u8": np.uint8(255),
            "flag": np.bool_(True),
        }
    if op == "unencodable":
        return {"handle": threading.Lock()}
    if op == "items":  # every targeted rank streams `items` items
        for i in range(int(payload.get("items", 1))):
            if mine:
                worker.add_streaming_result({"i": i, "rank": worker.rank})
        return {"rank": worker.rank}
    if op == "image":  # rank 0 streams one item with images, in the given format or the default one
        item = {"image": small_image(), "nested": [small_image((10, 250, 10), (8, 8))]}
        if worker.rank != 0:
            pass
        elif "image_format" in payload:
            worker.add_streaming_result(item, image_format=payload["image_format"], as_text_event=True)
        else:
            worker.add_streaming_result(item, as_text_event=True)
        return {"image": small_image((10, 10, 250), (5, 7))}
    if op == "arrays":  # rank 0 streams an array and a bf16 tensor
        if worker.rank == 0:
            worker.add_streaming_result(
                {
                    "array": np.arange(6, dtype=np.float32).reshape(2, 3),
                    "tensor": torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16),
                }
            )
        return {"scalar": np.float32(2.5)}
    if op == "stream_error":  # an error item between two ordinary items; the request succeeds
        if worker.rank == 0:
            worker.add_streaming_result({"n": 1})
            worker.add_streaming_error(ValueError("frame 2 could not be decoded"))
            worker.add_streaming_result({"n": 3})
        return {"done": True}
    if op == "items_then_raise":  # rank 0 streams, then `on_rank` raises while the other waits in a collective
        for i in range(int(payload.get("items", 2))):
            if worker.rank == 0:
                worker.add_streaming_result({"step": i + 1})
        if mine:
            raise ValueError(payload.get("message", f"failed on rank {worker.rank}"))
        dist.all_reduce(torch.ones(1))
        return {"rank": worker.rank}
    if op == "sleep":  # `items` items, `delay` seconds apart (an awaited sleep: the loop keeps running)
        for i in range(int(payload.get("items", 1))):
            await asyncio.sleep(float(payload.get("delay", 0.1)))
            if worker.rank == 0:
                worker.add_streaming_result({"i": i})
        return {"slept": True}
    raise ValueError(f"unknown op {op!r}")


class CompatWorker(DistributedWorker):
    """A fal-style worker: ``__init__(rank, world_size)`` override, async setup/__call__/teardown."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(rank, world_size)
        self.constructed_with = [rank, world_size]

    async def setup(self, marker_dir: str | None = None, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        self.setup_on_main = _on_main_thread()
        self.setup_loop = asyncio.get_running_loop()
        self.marker_dir = marker_dir
        self.rank_print(f"async setup on {self.device}")
        self.rank_print("setup details", debug=True)

    async def __call__(self, streaming: bool = False, op: str = "info", **payload: Any) -> Any:
        await asyncio.sleep(0)
        if op == "info":
            return {
                "rank": self.rank,
                "world_size": self.world_size,
                "device": str(self.device),
                "constructed_with": self.constructed_with,
                "setup_on_main": self.setup_on_main,
                "call_on_main": _on_main_thread(),
                "same_loop": asyncio.get_running_loop() is self.setup_loop,
                "cwd": os.getcwd(),
                "streaming": streaming,
                "payload_keys": sorted(payload),
            }
        return await _ops(self, streaming, op, payload)

    async def teardown(self) -> None:
        await asyncio.sleep(0)
        if self.marker_dir:
            where = "main" if _on_main_thread() else threading.current_thread().name
            Path(self.marker_dir, f"teardown-{self.rank}").write_text(where)


class FalWorker(fal.DistributedWorker):
    """The same ops on ``gridgen.fal.DistributedWorker`` (plain methods, as most fal workers are)."""

    def setup(self, **kwargs: Any) -> None:
        self.rank_print("fal worker ready")

    def __call__(self, streaming: bool = False, op: str = "value", **payload: Any) -> Any:
        return asyncio.run(_ops(self, streaming, op, payload))
