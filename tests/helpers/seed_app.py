"""The seed document's ``ExampleDistributedWorker``, as users wrote it for the other SDK.

Copied from ``seed/000_4e5a0e5c6cb599a7.txt`` with only these changes (each marked
``# gridgen:``): the import line; the model loading (the built-in tiny model instead of
``stabilityai/stable-diffusion-xl-base-1.0``, its tiny ``AutoencoderTiny`` instead of
``madebyollin/taesdxl``, float32 on CPU); and ``tensors_to_image_grid`` built on
``gridgen.make_grid`` instead of torchvision. The fal ``App`` part is not copied: the
test drives ``DistributedRunner`` the way ``ExampleDistributedApp.setup/run/stream`` do.

A module of its own, importable by name, because spawned worker processes import the
worker class by reference.
"""
# ruff: noqa: I001
# mypy: ignore-errors
# Kept as the seed wrote it, so the formatter leaves it alone:
# fmt: off

from math import floor, sqrt
from typing import TYPE_CHECKING, Any

from gridgen import DistributedRunner, DistributedWorker  # gridgen: was fal.distributed
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

__all__ = ["DistributedRunner", "ExampleDistributedWorker", "ExampleRequest", "tensors_to_image_grid"]

# Helper function


def tensors_to_image_grid(
    tensors: list["torch.Tensor"], blur_radius: int = 0
) -> "PILImage.Image":
    """
    Convert a list of tensors to a grid image.
    """
    from gridgen import make_grid  # gridgen: was torchvision.utils.make_grid
    from PIL import ImageFilter

    # Create a grid of images (torchvision's normalize=True, scale_each=True: each image
    # is stretched to [0, 1]; nrow is the number of images per row)
    normalized = [(t - t.min()) / (t.max() - t.min()).clamp(min=1e-5) for t in tensors]
    pil_image = make_grid(normalized, cols=floor(sqrt(len(tensors))))

    if blur_radius > 0:
        pil_image = pil_image.filter(ImageFilter.GaussianBlur(radius=blur_radius))

    return pil_image


# Distributed app code


class ExampleDistributedWorker(DistributedWorker):
    """
    This is a distributed worker that runs on multiple GPUs.

    It will run the Stable Diffusion XL model using random seeds on each GPU,
    then return the images as a grid to the main process.
    """

    def setup(self, **kwargs: Any) -> None:
        """
        On setup, we need to initialize the model.
        """
        import torch
        from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

        from gridgen.sdxl import ensure_tiny_sdxl  # gridgen: the tiny model, no download

        dtype = torch.float16 if self.device.type == "cuda" else torch.float32  # gridgen: CPU
        self.pipeline = StableDiffusionXLPipeline.from_pretrained(
            str(ensure_tiny_sdxl()),  # gridgen: was "stabilityai/stable-diffusion-xl-base-1.0"
            low_cpu_mem_usage=False,
        ).to(self.device, dtype=dtype)
        self.tiny_vae = AutoencoderTiny.from_pretrained(
            str(ensure_tiny_sdxl() / "taesd"),  # gridgen: was "madebyollin/taesdxl"
            torch_dtype=dtype,
        ).to(self.device, dtype=dtype)
        if self.rank != 0:
            self.pipeline.set_progress_bar_config(disable=True)

    def pipeline_callback(
        self,
        pipeline: "torch.nn.Module",
        step: int,
        timestep: int,
        tensors: dict[str, "torch.Tensor"],
    ) -> dict[str, "torch.Tensor"]:
        """
        This callback is called after each step of the pipeline.
        """
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
            gather_list = [
                torch.zeros_like(image, device=self.device)
                for _ in range(self.world_size)
            ]
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
            gather_list = [
                torch.zeros_like(image, device=self.device)
                for _ in range(self.world_size)
            ]
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


# Fal app code (only the request model; the test plays ExampleDistributedApp's part)


class ExampleRequest(BaseModel):
    """
    This is the request model for the example app.

    There is only one required field, the prompt.
    """

    prompt: str = Field()
    negative_prompt: str = Field(default="blurry, low quality")
    num_inference_steps: int = Field(default=20)
    width: int = Field(default=1024)
    height: int = Field(default=1024)
