"""A FLUX-LoRA-style preprocessor and trainer, written the way fal.distributed users write them.

Our own code, in the shape of the public fal.distributed demos (a dataset preprocessor
and a LoRA trainer behind a FastAPI app), with tiny tensors in place of FLUX: the point
is the calls such programs make, not the model. What they rely on:

* ``self.rank_print(...)`` in ``setup``;
* ``dist.all_gather_object`` (the preprocessor gathers every rank's captions and latents);
* ``DistributedDataParallel`` over the already initialised process group (gloo on CPU);
* a ``bfloat16`` ``dist.broadcast`` (rank 0's initial LoRA weights);
* SSE progress events from ``add_streaming_result(..., as_text_event=True)`` through
  ``StreamingResponse(runner.stream(..., as_text_events=True))``;
* a ``"streaming"`` key in the payload of every call the app makes;
* ``if "error" in result`` checks after ``invoke``.

The import line below is the only line that differs between the fal program and this one.
The tests also run this file with it changed to ``from gridgen import ...``
(``helpers.fal.plain_variant``): both must work.

A module of its own, importable by name, because spawned workers import the classes by reference.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from gridgen.fal import DistributedRunner, DistributedWorker

LATENT_CHANNELS = 4
PATCH = 4


def decode_data_url(url: str) -> Any:
    """A ``data:image/...;base64,`` URL as an RGB PIL image."""
    from PIL import Image

    header, _, data = url.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ValueError(f"image_urls must be data:image/...;base64 URLs, got {url[:40]!r}")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


# --------------------------------------------------------------------------- preprocessor


class PreprocessorWorker(DistributedWorker):
    """Each rank captions and encodes its share of the images; rank 0 returns them all."""

    def setup(self, resolution: int = 16, **kwargs: Any) -> None:
        import torch

        self.rank_print(f"loading the captioner and the VAE encoder on {self.device}")
        torch.manual_seed(0)  # the same "weights" on every rank, as from_pretrained gives
        self.encoder = torch.nn.Conv2d(3, LATENT_CHANNELS, kernel_size=PATCH, stride=PATCH).to(self.device)
        self.encoder.requires_grad_(False)
        self.resolution = resolution
        self.rank_print("preprocessor ready", debug=True)

    def caption(self, index: int, trigger_word: str, image: Any) -> str:
        r, g, b = (sum(band) / len(band) for band in zip(*image.getdata(), strict=True))
        tone = "reddish" if r >= max(g, b) else "greenish" if g >= b else "bluish"
        return f"a photo of {trigger_word}, {tone}, sample {index}"

    def encode(self, image: Any) -> Any:
        import torch

        image = image.resize((self.resolution, self.resolution))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(self.resolution, self.resolution, 3).permute(2, 0, 1).float() / 127.5 - 1
        return self.encoder(pixels.unsqueeze(0).to(self.device))[0].cpu()

    def __call__(
        self,
        streaming: bool = False,
        image_urls: list[str] | None = None,
        trigger_word: str = "TOK",
        **kwargs: Any,
    ) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        urls = list(image_urls or [])
        mine = list(range(self.rank, len(urls), self.world_size))
        records = []
        for done, index in enumerate(mine, start=1):
            image = decode_data_url(urls[index])
            records.append({"index": index, "caption": self.caption(index, trigger_word, image), "latent": self.encode(image)})
            if streaming and self.rank == 0:
                self.add_streaming_result(
                    {"stage": "preprocess", "progress": done / max(len(mine), 1), "message": f"encoded {done}/{len(mine)}"},
                    as_text_event=True,
                )
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, records)
        if self.rank != 0:
            return {}
        merged = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        latents = torch.stack([r["latent"] for r in merged]) if merged else torch.zeros(0)
        return {
            "captions": [r["caption"] for r in merged],
            "latents": latents,
            "num_images": len(merged),
            "ranks": self.world_size,
        }


class PreprocessRequest(BaseModel):
    image_urls: list[str] = Field(default_factory=list)
    trigger_word: str = "TOK"


@asynccontextmanager
async def preprocessor_lifespan(app: FastAPI) -> AsyncIterator[None]:
    runner = DistributedRunner(worker_cls=PreprocessorWorker, world_size=app.state.world_size)
    await runner.start(resolution=16)
    warmup = await runner.invoke({"image_urls": [], "streaming": False})
    assert "error" not in warmup, warmup
    app.state.runner = runner
    yield
    await runner.stop()


def preprocessor_app(world_size: int = 2) -> FastAPI:
    app = FastAPI(lifespan=preprocessor_lifespan)
    app.state.world_size = world_size

    @app.post("/")
    async def preprocess(request: PreprocessRequest) -> dict[str, Any]:
        result = await app.state.runner.invoke({**request.model_dump(), "streaming": False})
        if "error" in result:
            raise HTTPException(status_code=500, detail=result["error"])
        latents = result["latents"]
        return {
            "captions": result["captions"],
            "latent_shape": list(latents.shape),
            "latent_sum": float(latents.sum()),
        }

    @app.post("/stream")
    async def preprocess_stream(request: PreprocessRequest) -> StreamingResponse:
        return StreamingResponse(
            app.state.runner.stream({**request.model_dump(), "streaming": True}, as_text_events=True),
            media_type="text/event-stream",
        )

    return app


# --------------------------------------------------------------------------- trainer


class LoRALinear:
    """``base(x) + x @ A.T @ B.T * scale``: a frozen base layer with a low-rank update."""

    @staticmethod
    def build(features: int, rank: int, device: Any) -> Any:
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base = torch.nn.Linear(features, features)
                self.base.requires_grad_(False)
                self.lora_a = torch.nn.Parameter(torch.zeros(rank, features))
                self.lora_b = torch.nn.Parameter(torch.zeros(features, rank))
                self.scale = 1.0 / rank

            def forward(self, x: Any) -> Any:
                return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

        return Module().to(device)


class Optimizer(str, Enum):
    SGD = "sgd"
    ADAM = "adam"


class TrainerWorker(DistributedWorker):
    """Data-parallel LoRA training: DDP averages the gradients, rank 0 streams the loss."""

    def setup(self, features: int = 8, lora_rank: int = 2, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.rank_print(f"building the trainer (world size {self.world_size})")
        torch.manual_seed(1234)  # the frozen base weights, as loaded from a checkpoint
        module = LoRALinear.build(features, lora_rank, self.device)
        # The LoRA init comes from rank 0, in bf16 as the checkpoint stores it.
        init = torch.randn(lora_rank, features, dtype=torch.bfloat16) * 0.1 if self.rank == 0 else torch.empty(lora_rank, features, dtype=torch.bfloat16)
        init = init.to(self.device)
        dist.broadcast(init, src=0)
        with torch.no_grad():
            module.lora_a.copy_(init.float())
        self.init_checksum = float(init.float().sum())
        style = torch.Generator().manual_seed(99)
        self.style = (torch.randn(features, 1, generator=style) @ torch.randn(1, features, generator=style) * 0.3).to(self.device)
        self.model = DistributedDataParallel(module)
        self.features = features
        self.rank_print("trainer ready", debug=True)

    def __call__(
        self,
        streaming: bool = False,
        steps: int = 4,
        learning_rate: float = 0.05,
        batch_size: int = 4,
        seed: int = 0,
        optimizer: str = "sgd",
        **kwargs: Any,
    ) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = (torch.optim.Adam if optimizer == Optimizer.ADAM else torch.optim.SGD)(params, lr=learning_rate)
        # Each rank trains on its own shard: a fixed batch drawn from its own generator.
        generator = torch.Generator().manual_seed(seed * 1000 + self.rank)
        x = torch.randn(batch_size, self.features, generator=generator).to(self.device)
        module = self.model.module
        with torch.no_grad():
            target = module.base(x) + x @ self.style.T  # the "style" the LoRA has to learn
        losses = []
        for step in range(steps):
            loss = torch.nn.functional.mse_loss(self.model(x), target)
            opt.zero_grad()
            loss.backward()  # DDP all-reduces the LoRA gradients here
            opt.step()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            losses.append(float(mean_loss) / self.world_size)
            if streaming and self.rank == 0:
                self.add_streaming_result(
                    {"step": step + 1, "total_steps": steps, "progress": (step + 1) / steps, "loss": losses[-1]},
                    as_text_event=True,
                )
        checksums: list[Any] = [None] * self.world_size
        dist.all_gather_object(checksums, float(module.lora_b.detach().sum()))
        if self.rank != 0:
            return {}
        return {
            "lora_a": module.lora_a.detach().to(torch.bfloat16).cpu(),
            "lora_b": module.lora_b.detach().to(torch.bfloat16).cpu(),
            "loss_history": losses,
            "replicas_in_sync": all(math.isclose(c, checksums[0], rel_tol=1e-6, abs_tol=1e-9) for c in checksums),
            "init_checksum": self.init_checksum,
            "saved_to": Path("/tmp/loras") / f"lora-seed{seed}.safetensors",
            "finished_at": datetime.now(timezone.utc),
        }


class TrainRequest(BaseModel):
    steps: int = 4
    learning_rate: float = 0.05
    seed: int = 0
    optimizer: Optimizer = Optimizer.SGD


@asynccontextmanager
async def trainer_lifespan(app: FastAPI) -> AsyncIterator[None]:
    runner = DistributedRunner(worker_cls=TrainerWorker, world_size=app.state.world_size)
    await runner.start(features=8, lora_rank=2)
    warmup = await runner.invoke({"steps": 1, "streaming": False})
    assert "error" not in warmup, warmup
    async for _ in runner.stream({"steps": 1, "streaming": True}):
        pass
    app.state.runner = runner
    yield
    await runner.stop()


def trainer_app(world_size: int = 2) -> FastAPI:
    app = FastAPI(lifespan=trainer_lifespan)
    app.state.world_size = world_size

    @app.post("/")
    async def train(request: TrainRequest) -> dict[str, Any]:
        result = await app.state.runner.invoke({**request.model_dump(), "streaming": False})
        if "error" in result:
            raise HTTPException(status_code=500, detail=result["error"])
        return {
            "loss_history": result["loss_history"],
            "lora_dtype": str(result["lora_b"].dtype),
            "lora_shape": list(result["lora_b"].shape),
            "replicas_in_sync": result["replicas_in_sync"],
            "saved_to": str(result["saved_to"]),
            "finished_at": str(result["finished_at"]),
        }

    @app.post("/stream")
    async def train_stream(request: TrainRequest) -> StreamingResponse:
        return StreamingResponse(
            app.state.runner.stream({**request.model_dump(), "streaming": True}, as_text_events=True),
            media_type="text/event-stream",
        )

    return app
