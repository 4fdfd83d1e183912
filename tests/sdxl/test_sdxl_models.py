"""Models: the tiny model's build, cache and load; clear errors for missing models; sdxl-random."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from gridgen.sdxl import (
    ModelNotFoundError,
    SDXLWorker,
    build_random_sdxl,
    build_tiny_sdxl,
    ensure_tiny_sdxl,
    load_pipeline,
)
from gridgen.sdxl.models import load_preview_decoder, resolve_dtype, sdxl_base_config


def test_tiny_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    first = build_tiny_sdxl()
    assert torch.equal(torch.rand(1), expected_next)
    second = build_tiny_sdxl()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_tiny_folder_layout_and_reuse(tiny_cache: str) -> None:
    folder = ensure_tiny_sdxl()
    assert folder == Path(tiny_cache) / "tiny-sdxl-v1"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    assert len(vocab) == 514 and vocab["<|endoftext|>"] == 513
    assert (folder / "tokenizer_2" / "merges.txt").is_file()
    assert (folder / "taesd" / "config.json").is_file()
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_sdxl() == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 10 * 2**20


def test_processes_racing_to_build_the_tiny_model_agree(tmp_path: Path) -> None:
    code = "import sys; from gridgen.sdxl import ensure_tiny_sdxl; print(ensure_tiny_sdxl(sys.argv[1]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == [str(tmp_path / "tiny-sdxl-v1")] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sdxl-v1"]  # no temp dirs left
    pipeline: Any = load_pipeline("tiny")  # the other cache; same weights by construction
    raced: Any = type(pipeline).from_pretrained(outputs[0])
    for key, value in pipeline.unet.state_dict().items():
        assert torch.equal(value, raced.unet.state_dict()[key]), key


def test_tiny_loads_through_from_pretrained_with_the_real_classes(tiny_cache: str) -> None:
    pipeline: Any = load_pipeline("tiny")
    names = {
        "unet": "UNet2DConditionModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "scheduler": "EulerDiscreteScheduler",
    }
    for attribute, class_name in names.items():
        assert type(getattr(pipeline, attribute)).__name__ == class_name
    assert pipeline.unet.dtype == torch.float32 and pipeline.device.type == "cpu"
    assert pipeline.vae_scale_factor == 8  # like SDXL: latents are 1/8 of the image
    assert sum(p.numel() for p in pipeline.unet.parameters()) < 2_000_000
    bf16: Any = load_pipeline("tiny", dtype="bf16")
    assert bf16.unet.dtype == torch.bfloat16


def test_a_missing_hub_model_fails_fast_naming_the_model_and_the_fix(tiny_cache: str) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as caught:
        load_pipeline("nobody/no-such-sdxl")
    assert time.monotonic() - started < 20  # no network retries
    message = str(caught.value)
    assert "'nobody/no-such-sdxl'" in message
    assert "HF_HUB_OFFLINE" in message and 'model="tiny"' in message
    assert isinstance(caught.value, FileNotFoundError)


def test_a_missing_folder_and_a_missing_preview_model(tmp_path: Path, tiny_cache: str) -> None:
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        load_pipeline(str(tmp_path / "nothing-here"))
    with pytest.raises(
        ModelNotFoundError, match=r"preview model 'madebyollin/taesdxl'.*preview=\"linear\""
    ):
        load_preview_decoder(None, model="stabilityai/stable-diffusion-xl-base-1.0")
    worker = SDXLWorker()
    with pytest.raises(ModelNotFoundError, match=r"stable-diffusion-xl-base-1\.0"):
        worker.setup()  # the default model is not here and the hub is off
    with pytest.raises(ValueError, match="preview must be"):
        worker.setup(model="tiny", preview="fancy")  # type: ignore[arg-type]


def test_dtypes() -> None:
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "cuda:1") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", "cpu")


def test_the_shipped_config_is_the_full_size_architecture() -> None:
    config = sdxl_base_config()
    assert config["unet"]["block_out_channels"] == [320, 640, 1280]
    import diffusers

    kwargs = {k: v for k, v in config["unet"].items() if not k.startswith("_")}
    unet_cls: Any = diffusers.UNet2DConditionModel
    with torch.device("meta"):  # shapes only, no memory
        unet = unet_cls(**kwargs)
    assert sum(p.numel() for p in unet.parameters()) == config["compute"]["unet_params"]


def _shrunken_config() -> dict[str, Any]:
    """The shipped config with every width cut down, so sdxl-random's code path runs on CPU."""
    config: dict[str, Any] = json.loads(json.dumps(sdxl_base_config()))
    config["unet"].update(
        block_out_channels=[32, 64, 64],
        attention_head_dim=[2, 4, 4],
        transformer_layers_per_block=[1, 1, 1],
        cross_attention_dim=64,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        norm_num_groups=8,
    )
    config["vae"].update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1)
    for name in ("text_encoder", "text_encoder_2"):
        config[name].update(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            projection_dim=32,
        )
    return config


def test_sdxl_random_builds_on_the_device_in_the_dtype_and_runs() -> None:
    pipeline: Any = build_random_sdxl("cpu", torch.bfloat16, config=_shrunken_config())
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipeline, name)
        assert module.dtype == torch.bfloat16 and module.device.type == "cpu", name
    assert type(pipeline.tokenizer).__name__ == "CLIPTokenizer"
    pipeline.set_progress_bar_config(disable=True)
    latents = pipeline(
        prompt="x", width=64, height=64, num_inference_steps=1, output_type="latent"
    ).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdxl_random_full_size_on_gpu() -> None:
    started = time.monotonic()
    pipeline: Any = load_pipeline("sdxl-random", device="cuda")
    built = time.monotonic() - started
    assert pipeline.unet.dtype == torch.float16 and pipeline.unet.device.type == "cuda"
    assert (
        sum(p.numel() for p in pipeline.unet.parameters())
        == sdxl_base_config()["compute"]["unet_params"]
    )
    assert built < 120
    pipeline.set_progress_bar_config(disable=True)
    latents = pipeline(prompt="x", num_inference_steps=2, output_type="latent").images
    assert latents.shape == (1, 4, 128, 128)
