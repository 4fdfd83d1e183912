"""The FLUX.1 and SD3.5 model builders: tiny models saved and loaded through from_pretrained with
the real classes and local tokenizers; the shipped full-size configs; flux-random and sd3-random."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gridgen.diffusion import (
    FluxSchnellWorker,
    build_random,
    build_tiny_flux,
    ensure_tiny,
    family_of,
    load_family_pipeline,
    worker_for,
)
from gridgen.diffusion.builders import family_config
from gridgen.diffusion.families import FLUX_DEV, FLUX_SCHNELL, SD3

_PARTS = {
    "tiny-flux": {
        "transformer": "FluxTransformer2DModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
        "text_encoder_2": "T5EncoderModel", "tokenizer": "CLIPTokenizer", "tokenizer_2": "T5Tokenizer",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    },
    "tiny-sd3": {
        "transformer": "SD3Transformer2DModel", "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel", "tokenizer_3": "T5Tokenizer",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    },
}


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_tiny_models_load_through_from_pretrained_with_the_real_classes(family_cache: str, model: str) -> None:
    folder = ensure_tiny(model)
    assert folder == Path(family_cache) / f"{model}-v1"
    assert ensure_tiny(model) == folder  # built once, then reused
    index = json.loads((folder / "model_index.json").read_text())
    family = FLUX_DEV if model == "tiny-flux" else SD3
    assert index["_class_name"] == family.pipeline_class
    pipeline: Any = load_family_pipeline(family, model)
    for name, cls in _PARTS[model].items():
        assert type(getattr(pipeline, name)).__name__ == cls, name
    assert pipeline.vae.config.latent_channels == 16
    assert sum(p.numel() for p in pipeline.transformer.parameters()) < 2_000_000  # tiny
    t5 = pipeline.tokenizer_2 if model == "tiny-flux" else pipeline.tokenizer_3
    assert t5("a cat").input_ids[-1] == t5.eos_token_id == 1


def test_tiny_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first, second = build_tiny_flux(), build_tiny_flux()
    assert torch.equal(torch.rand(1), before)
    for a, b in zip(first.transformer.parameters(), second.transformer.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "cls"), [("flux-random", "FluxTransformer2DModel"), ("sd3-random", "SD3Transformer2DModel")])
def test_the_shipped_configs_are_the_full_size_architectures(name: str, cls: str) -> None:
    import diffusers
    import transformers

    config = family_config(name)
    kwargs = {k: v for k, v in config["transformer"].items() if not k.startswith("_")}
    t5_kwargs = {k: v for k, v in config["t5"].items() if not k.startswith("_") and k not in ("note", "model_type")}
    with torch.device("meta"):  # shapes only, no memory
        transformer = getattr(diffusers, cls)(**kwargs)
        t5 = transformers.T5EncoderModel(transformers.T5Config(**t5_kwargs))
    assert sum(p.numel() for p in transformer.parameters()) == config["compute"]["transformer_params"]
    assert sum(p.numel() for p in t5.parameters()) == config["compute"]["t5_params"]


def _shrunken(name: str) -> dict[str, Any]:
    """The shipped config with every width cut down, so the random build runs on CPU."""
    config: dict[str, Any] = json.loads(json.dumps(family_config(name)))
    config["vae"].update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1)
    config["t5"].update(d_model=64, d_ff=37, d_kv=8, num_heads=4, num_layers=1)
    small_clip = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                  "num_hidden_layers": 1, "projection_dim": 32}
    config["text_encoder"].update(small_clip)
    if name != "sd3-random":
        config["transformer"].update(num_layers=1, num_single_layers=1, attention_head_dim=16,
                                     num_attention_heads=2, joint_attention_dim=64,
                                     pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
    else:
        config["text_encoder_2"].update(small_clip)
        config["transformer"].update(num_layers=1, attention_head_dim=8, num_attention_heads=4,
                                     joint_attention_dim=64, caption_projection_dim=32,
                                     pooled_projection_dim=64, pos_embed_max_size=32)
    return config


def test_flux_schnell_random_is_flux_dev_without_the_guidance_input_and_with_a_fixed_shift() -> None:
    dev, schnell = family_config("flux-random"), family_config("flux-schnell-random")
    assert dev["transformer"]["guidance_embeds"] is True and schnell["transformer"]["guidance_embeds"] is False
    assert (schnell["scheduler"]["shift"], schnell["scheduler"]["use_dynamic_shifting"]) == (1.0, False)
    assert family_config("flux-random") == dev  # the shipped dev config is not changed in place
    assert {k: v for k, v in schnell["transformer"].items() if k != "guidance_embeds"} == {
        k: v for k, v in dev["transformer"].items() if k != "guidance_embeds"
    }
    assert worker_for("flux-schnell-random") is FluxSchnellWorker and family_of("flux-schnell-random") is FLUX_SCHNELL
    pipeline: Any = build_random("flux-schnell-random", "cpu", torch.float32, config=_shrunken("flux-schnell-random"))
    assert pipeline.transformer.config.guidance_embeds is False
    pipeline.set_progress_bar_config(disable=True)
    latents = pipeline(prompt="x", width=64, height=64, num_inference_steps=1, guidance_scale=0.0,
                       output_type="latent", max_sequence_length=32).images
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("name", ["flux-random", "sd3-random"])
def test_random_builds_on_the_device_in_the_dtype_and_runs(name: str) -> None:
    pipeline: Any = build_random(name, "cpu", torch.bfloat16, config=_shrunken(name))
    assert pipeline.transformer.dtype == torch.bfloat16 and pipeline.vae.dtype == torch.bfloat16
    pipeline.set_progress_bar_config(disable=True)
    latents = pipeline(
        prompt="x", width=64, height=64, num_inference_steps=1, output_type="latent", max_sequence_length=32
    ).images
    assert torch.isfinite(latents).all()
    assert latents.shape == ((1, 16, 64) if name == "flux-random" else (1, 16, 8, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flux_random_full_size_on_gpu() -> None:
    started = time.monotonic()
    pipeline: Any = load_family_pipeline(FLUX_DEV, "flux-random", device="cuda", dtype=torch.bfloat16)
    assert time.monotonic() - started < 300
    assert sum(p.numel() for p in pipeline.transformer.parameters()) == 11_901_408_320
    pipeline.set_progress_bar_config(disable=True)
    latents = pipeline(prompt="x", num_inference_steps=2, output_type="latent").images
    assert latents.shape == (1, 4096, 64) and torch.isfinite(latents).all()


def test_on_a_gpu_flux_and_sd3_default_to_bfloat16_and_sdxl_to_float16() -> None:
    """FLUX.1 and SD3.5 are published in bfloat16 and their T5-XXL overflows float16, so
    ``dtype=None`` must not put them there; on CPU every family runs float32."""
    from gridgen.diffusion._env import resolve_dtype
    from gridgen.diffusion.families import FAMILIES

    wanted = {"sdxl": torch.float16, "flux-dev": torch.bfloat16, "flux-schnell": torch.bfloat16,
              "sd3": torch.bfloat16}
    assert set(FAMILIES) == set(wanted)
    for name, family in FAMILIES.items():
        assert resolve_dtype(None, "cuda:0", family.cuda_dtype) == wanted[name], name
        assert resolve_dtype(None, "cpu", family.cuda_dtype) == torch.float32, name
        assert resolve_dtype("fp16", "cuda:0", family.cuda_dtype) == torch.float16, name
