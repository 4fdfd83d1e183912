"""Each family's fields and rules: refused before any work (on the host, in batch_key), naming the
field and the rule; a field another family accepts is an error here, not silently ignored.
Model selection from model_index.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gridgen.diffusion import (
    FluxSchnellWorker,
    FluxWorker,
    SD3Worker,
    family_of,
    worker_for,
)
from gridgen.sdxl import InvalidRequestError, SDXLWorker

from helpers.families import SMALL


def _rules(worker: type[Any], payload: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as caught:
        worker.batch_key(payload)
    return {error.field: error.rule for error in caught.value.errors}


def test_flux_dev_refuses_a_negative_prompt_and_says_why() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        FluxWorker.batch_key({**SMALL, "negative_prompt": "blurry"})
    (error,) = caught.value.errors
    assert (error.field, error.rule) == ("negative_prompt", "unsupported_field")
    assert "FLUX.1-dev" in str(caught.value) and "guidance-distilled" in str(caught.value)
    assert "allowed: prompt, " in error.message


def test_flux_schnell_refuses_guidance_and_many_steps() -> None:
    assert _rules(FluxSchnellWorker, {**SMALL, "guidance_scale": 3.5}) == {"guidance_scale": "unsupported_field"}
    assert _rules(FluxSchnellWorker, {**SMALL, "num_inference_steps": 28}) == {
        "num_inference_steps": "less_than_equal"
    }
    assert FluxSchnellWorker.batch_units({"prompt": "x"}, 3) == 3


@pytest.mark.parametrize("worker", [FluxWorker, FluxSchnellWorker, SD3Worker])
def test_sizes_are_multiples_of_16_and_fields_are_typed(worker: type[Any]) -> None:
    assert _rules(worker, {**SMALL, "width": 72}) == {"width": "multiple_of"}
    assert _rules(worker, {**SMALL, "height": 32}) == {"height": "greater_than_equal"}
    assert _rules(worker, {**SMALL, "num_images": True}) == {"num_images": "value_error"}
    assert _rules(worker, {**SMALL, "prompt": "  "}) == {"prompt": "value_error"}
    assert _rules(worker, {**SMALL, "sampler": "dpm"}) == {"sampler": "extra_forbidden"}
    assert _rules(worker, {"width": 64}) == {"prompt": "missing"}


def test_sd3_accepts_a_negative_prompt_and_guidance() -> None:
    key = SD3Worker.batch_key({**SMALL, "negative_prompt": "blurry", "guidance_scale": 4.0})
    assert key == SD3Worker.batch_key({**SMALL, "prompt": "a dog", "guidance_scale": 4.0, "seed": 3})
    assert key != SD3Worker.batch_key({**SMALL, "guidance_scale": 5.0})
    assert key != FluxWorker.batch_key({**SMALL, "guidance_scale": 4.0})  # families never merge


def test_defaults_per_family() -> None:
    from gridgen.diffusion import FluxDevRequest, FluxSchnellRequest, SD3Request

    dev, schnell, sd3 = (m(prompt="x") for m in (FluxDevRequest, FluxSchnellRequest, SD3Request))
    assert (dev.num_inference_steps, dev.guidance_scale, dev.width) == (28, 3.5, 1024)
    assert schnell.num_inference_steps == 4 and "guidance_scale" not in FluxSchnellRequest.model_fields
    assert (sd3.num_inference_steps, sd3.guidance_scale, sd3.negative_prompt) == (28, 3.5, "")


def test_a_bad_payload_fails_the_direct_worker_before_any_denoising(direct_workers: dict[str, Any]) -> None:
    worker = direct_workers["tiny-flux"]
    calls: list[int] = []
    hook = worker.pipeline.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(InvalidRequestError, match="negative_prompt"):
            worker(**SMALL, negative_prompt="blurry")
    finally:
        hook.remove()
    assert calls == []


def test_builtin_models_and_folders_pick_their_family(family_cache: str, tmp_path: Path) -> None:
    from gridgen.diffusion import build_tiny_flux, ensure_tiny

    assert worker_for("tiny") is SDXLWorker
    assert worker_for("tiny-flux") is FluxWorker and worker_for("flux-random") is FluxWorker
    assert worker_for("tiny-sd3") is SD3Worker and worker_for("sd3-random") is SD3Worker
    # folders: by model_index.json's _class_name (and FLUX's guidance_embeds)
    assert family_of(str(ensure_tiny("tiny"))).name == "sdxl"
    assert family_of(str(ensure_tiny("tiny-flux"))).name == "flux-dev"
    assert family_of(str(ensure_tiny("tiny-sd3"))).name == "sd3"
    schnell = tmp_path / "schnell"
    build_tiny_flux(guidance_embeds=False).save_pretrained(schnell)
    assert worker_for(str(schnell)) is FluxSchnellWorker
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="KandinskyPipeline pipeline; gridgen serves"):
        family_of(str(other))
    # unreadable (a missing folder, an uncached hub id offline): SDXL, which then fails to load
    # with ModelNotFoundError as it always did
    assert family_of(str(tmp_path / "missing")).name == "sdxl"
    assert family_of("someone/not-cached-model").name == "sdxl"


def test_a_worker_refuses_a_model_of_another_family(family_cache: str) -> None:
    with pytest.raises(ValueError, match=r"FLUX.1-dev pipeline, not SDXL: .*worker_for\('tiny-flux'\)"):
        SDXLWorker().setup(model="tiny-flux")
    with pytest.raises(ValueError, match=r"step_cache needs diffusers' cache hooks, which Stable Diffusion 3.5 lacks"):
        SD3Worker().setup(model="tiny-sd3", step_cache=0.1)


def test_a_schnell_folder_runs_without_guidance(tmp_path: Path) -> None:
    from gridgen.diffusion import build_tiny_flux

    folder = tmp_path / "schnell"
    build_tiny_flux(guidance_embeds=False).save_pretrained(folder)
    worker = worker_for(str(folder))()
    worker.setup(model=str(folder))
    assert worker.pipeline.transformer.config.guidance_embeds is False
    result = worker(**{**SMALL, "num_inference_steps": 2}, num_images=2, seed=3, output="images")
    assert result["seeds"] == [3, 4] and [image.format for image in result["images"]] == ["png", "png"]
    with pytest.raises(InvalidRequestError, match=r"guidance_scale: not supported by FLUX\.1-schnell"):
        worker(**SMALL, guidance_scale=1.0)
