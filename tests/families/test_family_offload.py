"""CPU offload (``cpu_offload=True``): diffusers' model offload of the text encoders and the
VAE, with the denoiser kept on the GPU. No GPU runs here, so these check the hook layout and
the order of a call with the offload device set to the CPU (diffusers accepts it, and the
hooks then move nothing); the setup check that refuses a CPU device is bypassed for that."""

from __future__ import annotations

from typing import Any

import pytest

import gridgen.diffusion.worker as worker_module
from gridgen.diffusion import FluxWorker, SD3Worker
from gridgen.diffusion.levers import offload_all_but_denoiser

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 3, "num_inference_steps": 2}


def _offload_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = worker_module.check_setup

    def check_without_device_rule(cls: Any, model: str, device: Any, preview: Any, optimize: str,
                                  cpu_offload: bool, preview_model: Any) -> None:
        checked(cls, model, device, preview, optimize, False, preview_model)

    monkeypatch.setattr(worker_module, "check_setup", check_without_device_rule)


def test_the_denoiser_stays_and_the_text_encoders_and_vae_get_offload_hooks(family_cache: str) -> None:
    from diffusers import FluxPipeline

    from gridgen.diffusion.builders import ensure_tiny

    pipeline = FluxPipeline.from_pretrained(str(ensure_tiny("tiny-flux")))
    offload_all_but_denoiser(pipeline, "transformer", "cpu")
    assert not hasattr(pipeline.transformer, "_hf_hook")
    assert all(hasattr(getattr(pipeline, name), "_hf_hook") for name in ("text_encoder", "text_encoder_2", "vae"))
    chain = pipeline.model_cpu_offload_seq.split("->")
    assert "transformer" not in chain and chain[:2] == ["text_encoder", "text_encoder_2"] and chain[-1] == "vae"
    assert "transformer" not in type(pipeline)._exclude_from_cpu_offload  # the instance's list, not the class's


@pytest.mark.parametrize("worker_cls,model", [(FluxWorker, "tiny-flux"), (SD3Worker, "tiny-sd3")])
def test_the_text_encoders_leave_before_the_first_denoising_step(
    family_cache: str, monkeypatch: pytest.MonkeyPatch, worker_cls: type, model: str
) -> None:
    """The offload chain would keep T5 (9 GiB) beside the denoiser for the whole loop: the
    worker frees the hooked models once the prompts are encoded."""
    _offload_on_cpu(monkeypatch)
    worker = worker_cls()
    worker.setup(model=model, cpu_offload=True)
    events: list[str] = []
    free = worker.pipeline.maybe_free_model_hooks
    monkeypatch.setattr(worker.pipeline, "maybe_free_model_hooks", lambda: (events.append("free"), free())[1])
    worker.pipeline.transformer.register_forward_pre_hook(lambda *_: events.append("step"))
    result = worker(**SMALL)
    assert result["num_images"] == 1
    assert events[:3] == ["free", "step", "step"]
