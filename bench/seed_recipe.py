"""The seed document's worker, as users run it today, for the side-by-side benchmark.

Copied from the seed (``ExampleDistributedWorker`` and ``tensors_to_image_grid``) with
only two changes:

* the import line (``gridgen`` instead of ``fal.distributed``), which is the
  compatibility contract;
* model loading: no machine here reaches a model hub, so ``setup`` builds the same
  architecture with random weights (``gridgen.sdxl.models.build_random_sdxl``, fp16 on
  the device, the VAE left as diffusers loads it: fp16 with ``force_upcast`` = fp32 decode)
  and an ``AutoencoderTiny`` with its default (TAESD) config and random weights.

Everything else (one image per GPU per request, ``output_type="pt"``, the streaming
callback every 5 steps with its gather, blur and barrier) is the seed's code.
"""

from __future__ import annotations

from math import floor, sqrt
from typing import TYPE_CHECKING, Any

from gridgen import DistributedWorker

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage


def tensors_to_image_grid(tensors: list[torch.Tensor], blur_radius: int = 0) -> PILImage.Image:
    """
    Convert a list of tensors to a grid image.
    """
    from PIL import Image as PILImage
    from PIL import ImageFilter

    try:
        import torchvision  # type: ignore[import-untyped]
    except ImportError:  # only on the CPU dev machine (no CPU torchvision build): dry runs
        return _dry_run_grid(tensors, blur_radius)

    # Create a grid of images
    image = (
        torchvision.utils.make_grid(
            tensors,
            nrow=floor(sqrt(len(tensors))),
            normalize=True,
            scale_each=True,
        )
        .permute(1, 2, 0)
        .cpu()
        .numpy()
    )
    image = (image * 255).astype("uint8")
    pil_image = PILImage.fromarray(image)

    if blur_radius > 0:
        pil_image = pil_image.filter(ImageFilter.GaussianBlur(radius=blur_radius))

    return pil_image


def _dry_run_grid(tensors: list[torch.Tensor], blur_radius: int) -> PILImage.Image:
    from PIL import ImageFilter

    from gridgen import make_grid

    grid = make_grid([t.float().clamp(0, 1).cpu() for t in tensors], cols=floor(sqrt(len(tensors))))
    return grid.filter(ImageFilter.GaussianBlur(radius=blur_radius)) if blur_radius > 0 else grid


class ExampleDistributedWorker(DistributedWorker):
    """The seed's worker (see the module docstring for the two changes)."""

    def setup(self, **kwargs: Any) -> None:
        import torch
        from diffusers import AutoencoderTiny

        from gridgen.sdxl.models import build_random_sdxl, load_pipeline

        # seed: StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0", ...)
        if kwargs.get("model") == "tiny":  # CPU dry runs of the benchmark's plumbing
            self.pipeline = load_pipeline("tiny", device=self.device, dtype=torch.float32)
        else:
            self.pipeline = build_random_sdxl(self.device, torch.float16)
        # seed: AutoencoderTiny.from_pretrained("madebyollin/taesdxl", torch_dtype=torch.float16)
        dtype = torch.float32 if kwargs.get("model") == "tiny" else torch.float16
        self.tiny_vae = AutoencoderTiny().to(self.device, dtype=dtype)
        if self.rank != 0:
            self.pipeline.set_progress_bar_config(disable=True)
        self.pipeline.set_progress_bar_config(disable=True)  # bench: keep the log readable

    def pipeline_callback(
        self,
        pipeline: torch.nn.Module,
        step: int,
        timestep: int,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """
        This callback is called after each step of the pipeline.
        """
        if step > 0 and step % 5 != 0:
            return tensors

        import torch
        import torch.distributed as dist

        latents = tensors["latents"]
        image = self.tiny_vae.decode(latents / self.tiny_vae.config.scaling_factor, return_dict=False)[0]
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
        """
        Run the model on the worker and return the image.
        """
        import torch
        import torch.distributed as dist

        if kwargs.get("bench") == "memory":  # bench only: this process's peak GPU memory
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
            return {"peak_gib": peak}

        image = self.pipeline(
            prompt=prompt,
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            num_inference_steps=num_inference_steps,
            output_type="pt",
            callback_on_step_end=self.pipeline_callback if streaming else None,
        ).images[0]

        if self.rank == 0:
            gather_list = [torch.zeros_like(image, device=self.device) for _ in range(self.world_size)]
        else:
            gather_list = None

        # Gather the images from all workers
        # this will block until all workers are done
        dist.gather(image, gather_list, dst=0)

        # Clean memory on all workers
        torch.cuda.empty_cache()

        if not gather_list:
            # If we are not the main worker, we don't need to do anything
            return {}

        # The main worker will receive the images from all workers
        image = tensors_to_image_grid(gather_list)
        return {"image": image}
