"""Tiny LoRA adapters for the tiny models, made in the test with PEFT and diffusers' own
``save_lora_weights``: random low-rank weights on the attention projections, strong enough
to change a 64x64 image visibly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridgen.sdxl import SDXLWorker

# The denoiser of each family, and the save_lora_weights argument naming its layers.
_DENOISER = {"sdxl": ("unet", "unet_lora_layers"), "flux": ("transformer", "transformer_lora_layers"),
             "sd3": ("transformer", "transformer_lora_layers")}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_lora(
    pipeline: Any, family: str, path: Path, seed: int, rank: int = 4, std: float = 0.5,
    targets: list[str] = TARGETS,
) -> Path:
    """Write a random rank-``rank`` adapter of the layers ``targets`` for ``pipeline``'s
    denoiser to the file ``path`` (a ``.safetensors`` name) and return it; the pipeline is
    left without it."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    attribute, argument = _DENOISER[family]
    model = getattr(pipeline, attribute)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config, adapter_name="made_in_test")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    state = get_peft_model_state_dict(model, adapter_name="made_in_test")
    model.delete_adapters("made_in_test")
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipeline).save_lora_weights(
        str(path.parent), **{argument: state}, weight_name=path.name, safe_serialization=True
    )
    return path


def make_loras(model: str, folder: Path, names_and_seeds: dict[str, int]) -> dict[str, Path]:
    """One adapter file per name in ``folder`` (``NAME.safetensors``) for built-in ``model``."""
    from gridgen.diffusion import load_family_pipeline
    from gridgen.diffusion.models import family_of

    family = family_of(model)
    kind = "sdxl" if family.name == "sdxl" else "sd3" if family.name == "sd3" else "flux"
    pipeline = load_family_pipeline(family, model, device="cpu", dtype=None)
    return {
        name: make_lora(pipeline, kind, folder / f"{name}.safetensors", seed)
        for name, seed in names_and_seeds.items()
    }


SMALL: dict[str, Any] = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2,
                         "seed": 11, "num_images": 1, "output": "images"}
"""64x64, 2 steps, one image: what every LoRA test runs."""


def tiny_lora_worker(folder: Path, backend: type, **setup: Any) -> SDXLWorker:
    """The tiny SDXL with ``folder``'s adapters and ``setup``, checked to hold them in a
    ``backend`` (PEFT adapters, the fusion or the slot)."""
    worker = SDXLWorker()
    worker.setup(model="tiny", lora_dir=str(folder), **setup)
    assert isinstance(worker.lora_cache.backend, backend)
    return worker


def pixels(result: dict[str, Any]) -> list[Any]:
    """A result's images as uint8 arrays."""
    import numpy as np

    images = [image.open() if hasattr(image, "open") else image for image in result["images"]]
    return [np.asarray(image.convert("RGB")) for image in images]


def same(a: list[Any], b: list[Any]) -> bool:
    """Bit for bit the same images."""
    return len(a) == len(b) and all((x == y).all() for x, y in zip(a, b, strict=True))


def apart(a: list[Any], b: list[Any]) -> float:
    """Mean absolute difference of two image lists, in grey levels."""
    import numpy as np

    return float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)]))


def count_graphs_of_one_block(worker: Any) -> Any:
    """Compile one transformer block of ``worker``'s UNet with dynamo's ``eager`` backend and
    return ``torch._dynamo``'s counters, cleared: ``counters["stats"]["unique_graphs"]`` and
    ``counters["recompiles"]`` then count what the next requests trace. One block is enough
    to count, and dynamo's guards (what makes a change recompile) are the same whatever the
    backend; inductor would take minutes on these CPUs."""
    import torch
    from diffusers.models.attention import BasicTransformerBlock
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    block = next(m for m in worker.pipeline.unet.modules() if isinstance(m, BasicTransformerBlock))
    block.compile(backend="eager", fullgraph=True, dynamic=False)
    counters.clear()
    return counters


def with_loras(request: dict[str, Any], *specs: tuple[str, float]) -> dict[str, Any]:
    return {**request, "loras": [{"name": name, "scale": scale} for name, scale in specs]}


class FlakyLoraSDXLWorker(SDXLWorker):
    """The SDXL worker, except that rank 1 cannot load adapters named ``rank1-*``: one rank
    failing where the others succeed, as with a file only some ranks can read."""

    def setup(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().setup(**kwargs)
        cache = self.lora_cache
        if cache is None or self.rank != 1:
            return
        load = cache.backend.load

        def flaky_load(name: str, file: Path) -> Any:
            if name.startswith("rank1-"):
                raise OSError(f"rank 1 cannot read {file.name} (on purpose)")
            return load(name, file)

        cache.backend.load = flaky_load  # type: ignore[method-assign]
