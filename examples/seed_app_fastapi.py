"""The seed document's parallel-SDXL app, on gridgen and FastAPI.

The worker below is the seed's ``ExampleDistributedWorker`` with the import line changed
(``from gridgen import ...`` instead of ``from fal.distributed import ...``) and four
local changes, each marked ``# gridgen:`` below: the model comes from ``GRIDGEN_MODEL``
(so it runs on the built-in tiny model on a CPU), ``gridgen.make_grid`` replaces the
torchvision grid helper, the step callback asks ``should_stop()`` so a client that
disconnects stops the work within one step, and rank 0 draws no diffusers progress bar
per request into the server's log. The app is the seed's ``setup`` / ``run`` /
``stream`` as a FastAPI lifespan and two routes; ``/stream`` returns
``runner.stream(..., as_text_events=True)`` exactly as the seed does.

Run it on a CPU with the tiny model (random weights: the images are noise)::

    python examples/seed_app_fastapi.py --model tiny --workers 2 --device cpu --size 256 --steps 8

then, from another shell::

    curl -s -X POST localhost:8000/ -H 'content-type: application/json' -d '{"prompt": "a cat"}' | head -c 200
    python examples/stream_client.py "a cat" --url http://127.0.0.1:8000 --out previews/

Options are also read from the environment (``GRIDGEN_MODEL``, ``GRIDGEN_WORKERS``,
``GRIDGEN_DEVICE``, ``GRIDGEN_SIZE``, ``GRIDGEN_STEPS``); by default it is the seed's app:
SDXL base 1.0 in float16 on every visible GPU, 1024x1024, 20 steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from math import floor, sqrt
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from gridgen import DistributedRunner, DistributedWorker  # the one changed import line
from gridgen.images import image_data_url

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

MODEL = os.environ.get("GRIDGEN_MODEL", "stabilityai/stable-diffusion-xl-base-1.0")
SIZE = int(os.environ.get("GRIDGEN_SIZE", "1024"))
STEPS = int(os.environ.get("GRIDGEN_STEPS", "20"))


# Helper function


def tensors_to_image_grid(tensors: list[torch.Tensor], blur_radius: int = 0) -> PILImage.Image:
    """Convert a list of tensors to a grid image."""
    from PIL import ImageFilter

    from gridgen.grid import make_grid  # gridgen: instead of torchvision.utils.make_grid

    # torchvision's nrow is images per row, as gridgen's cols: the seed's floor(sqrt(n)).
    pil_image = make_grid([t.float().clamp(0, 1).cpu() for t in tensors], cols=floor(sqrt(len(tensors))))
    if blur_radius > 0:
        pil_image = pil_image.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    return pil_image


# Distributed app code


class ExampleDistributedWorker(DistributedWorker):
    """Runs SDXL on every rank with its own random seed, then returns the images as a grid."""

    def setup(self, **kwargs: Any) -> None:
        """On setup, we need to initialize the model."""
        from gridgen.sdxl.models import load_pipeline, load_preview_decoder

        # gridgen: the seed loads "stabilityai/stable-diffusion-xl-base-1.0" in float16 and
        # "madebyollin/taesdxl"; these helpers do the same from_pretrained calls, accept
        # "tiny", and pick float32 on a CPU.
        self.pipeline: Any = cast(Any, load_pipeline(MODEL, device=self.device, low_cpu_mem_usage=False))
        self.tiny_vae: Any = load_preview_decoder(None, model=MODEL, device=self.device)
        # gridgen: the seed keeps rank 0's progress bar; in a server's log it is one bar per request.
        self.pipeline.set_progress_bar_config(disable=True)

    def pipeline_callback(
        self,
        pipeline: Any,  # the seed says torch.nn.Module; it is the diffusers pipeline
        step: int,
        timestep: int,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """This callback is called after each step of the pipeline."""
        if self.should_stop():  # gridgen: collective, so every rank stops at the same step
            pipeline._interrupt = True
            return tensors
        if step > 0 and step % 5 != 0:
            return tensors

        import torch
        import torch.distributed as dist

        latents = tensors["latents"]
        image = self.tiny_vae.decode(
            latents / self.tiny_vae.config.scaling_factor, return_dict=False
        )[0]
        image = self.pipeline.image_processor.postprocess(image, output_type="pt")[0]

        if self.rank == 0:
            gather_list = [torch.zeros_like(image, device=self.device) for _ in range(self.world_size)]
        else:
            gather_list = None

        dist.gather(image, gather_list, dst=0)

        if gather_list:
            remaining = timestep / 1000
            image = tensors_to_image_grid(gather_list, blur_radius=int(remaining * 10))
            self.add_streaming_result({"image": image}, as_text_event=True)

        dist.barrier()
        return tensors

    def __call__(
        self,
        streaming: bool = False,
        width: int = 1024,
        height: int = 1024,
        prompt: str = "A fantasy landscape",
        negative_prompt: str = "A blurry image",
        num_inference_steps: int = 20,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run the model on the worker and return the image."""
        import torch
        import torch.distributed as dist

        image = self.pipeline(
            prompt=prompt,
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            # gridgen: the callback always runs (it carries the cancel check); the seed
            # passes it only when streaming.
            callback_on_step_end=self.pipeline_callback if streaming else self._cancel_only,
        ).images[0]

        if self.rank == 0:
            gather_list = [torch.zeros_like(image, device=self.device) for _ in range(self.world_size)]
        else:
            gather_list = None

        # Gather the images from all workers; this blocks until all workers are done
        dist.gather(image, gather_list, dst=0)

        # Clean memory on all workers
        torch.cuda.empty_cache()

        if not gather_list:
            # If we are not the main worker, we don't need to do anything
            return {}

        # The main worker will receive the images from all workers
        image = tensors_to_image_grid(gather_list)
        return {"image": image}

    def _cancel_only(
        self, pipeline: Any, step: int, timestep: int, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        if self.should_stop():
            pipeline._interrupt = True
        return tensors


# App code (the seed's fal.App, as FastAPI)


class ExampleRequest(BaseModel):
    """The request: only the prompt is required."""

    prompt: str = Field()
    negative_prompt: str = Field(default="blurry, low quality")
    num_inference_steps: int = Field(default=STEPS)
    width: int = Field(default=SIZE)
    height: int = Field(default=SIZE)


class ExampleResponse(BaseModel):
    """The response: the grid as a ``data:image/png;base64,...`` URL (fal's ``File``, inlined)."""

    image: str = Field()


def create_app(world_size: int | None = None, device: str | None = None) -> FastAPI:
    runner_box: dict[str, DistributedRunner[ExampleDistributedWorker]] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The seed's setup(): create a distributed runner, start it, warm up.
        runner = DistributedRunner(worker_cls=ExampleDistributedWorker, world_size=world_size, device=device)
        await runner.start()
        try:
            warmup_result = await runner.invoke(ExampleRequest(prompt="a cat wearing a hat").model_dump())
            assert "image" in warmup_result, "Warm-up failed, no image returned from the worker"
            runner_box["runner"] = runner
            yield
        finally:
            await runner.stop()

    app = FastAPI(title="parallel-sdxl (seed app on gridgen)", lifespan=lifespan)

    @app.post("/")
    async def run(request: ExampleRequest) -> ExampleResponse:
        """Run the model on the workers and return the image."""
        result = await runner_box["runner"].invoke(request.model_dump())
        assert "image" in result, "No image returned from the worker"
        return ExampleResponse(image=image_data_url(result["image"]))

    @app.post("/stream")
    async def stream(request: ExampleRequest) -> StreamingResponse:
        """Stream what the workers add via ``add_streaming_result``, images as data URLs."""
        return StreamingResponse(
            runner_box["runner"].stream(request.model_dump(), as_text_events=True),
            media_type="text/event-stream",
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="tiny | hub id | folder (env GRIDGEN_MODEL)")
    parser.add_argument("--workers", type=int, default=None, help="ranks (env GRIDGEN_WORKERS; default: GPUs or 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="env GRIDGEN_DEVICE")
    parser.add_argument("--size", type=int, default=None, help="default width and height (env GRIDGEN_SIZE)")
    parser.add_argument("--steps", type=int, default=None, help="default steps (env GRIDGEN_STEPS)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    # The request defaults and the model are read from the environment when this module
    # is imported, here and in every worker process (spawn imports it again): set them
    # there, then import the module afresh.
    for key, value in (
        ("GRIDGEN_MODEL", args.model),
        ("GRIDGEN_SIZE", args.size),
        ("GRIDGEN_STEPS", args.steps),
    ):
        if value is not None:
            os.environ[key] = str(value)
    workers = args.workers or (int(os.environ["GRIDGEN_WORKERS"]) if "GRIDGEN_WORKERS" in os.environ else None)
    device = args.device or os.environ.get("GRIDGEN_DEVICE")
    if device == "cpu" and workers and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one CPU would each start a thread per core and run many times slower.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))

    import importlib
    import sys

    import uvicorn

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    module = importlib.import_module("seed_app_fastapi")  # reads the environment set above
    uvicorn.run(module.create_app(workers, device), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
