"""Which models the transformer families' fast path puts behind CUDA graphs, and that the
pipelines give the same images through the wrappers.

The pipeline stays on the CPU while the worker's device says ``cuda``: the wrappers take the
static-buffer path they run on CPU (the capture itself needs a GPU and is measured by
``bench/family_levers.py``), so the choices and the plumbing run here.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gridgen.diffusion import family_of, load_family_pipeline
from gridgen.diffusion.fast import optimize_transformer
from gridgen.diffusion.graphed import GraphedForward

from helpers.families import fp8_on_cpu

ENCODERS = {"tiny-flux": ["text_encoder", "text_encoder_2"], "tiny-sd3": ["text_encoder", "text_encoder_2", "text_encoder_3"]}


def _pipeline(model: str, dtype: torch.dtype = torch.float32) -> Any:
    pipe = load_family_pipeline(family_of(model), model, device="cpu", dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _graphed(pipe: Any) -> list[str]:
    names = ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3"]
    models = {n: getattr(pipe, n, None) for n in names}
    return [n for n, m in models.items() if m is not None and isinstance(vars(m).get("forward"), GraphedForward)]


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_compile_graphs_the_transformer_and_every_text_encoder(family_cache: str, model: str) -> None:
    pipe = _pipeline(model)
    fixed, graphed = optimize_transformer(pipe, "compile", "cuda", blocks=family_of(model).compile_blocks)
    assert fixed and len(graphed) == len(ENCODERS[model]) + 1
    assert _graphed(pipe) == ["transformer", *ENCODERS[model]]


@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        ("graphs", {}, ["text_encoder", "text_encoder_2"]),  # the eager transformer is not graphed
        ("compile", {"step_cache": 0.1}, ["text_encoder", "text_encoder_2"]),  # decides on the host
        ("compile", {"text_encoder_graphs": False}, ["transformer"]),
        ("compile", {"transformer_graphs": False}, ["text_encoder", "text_encoder_2"]),  # sequence parallel
        ("none", {}, []),
    ],
)
def test_what_stays_eager(family_cache: str, mode: str, options: dict[str, Any], expected: list[str]) -> None:
    pipe = _pipeline("tiny-flux")
    optimize_transformer(pipe, mode, "cuda", **options)  # type: ignore[arg-type]
    assert _graphed(pipe) == expected


def test_an_fp8_transformer_stays_uncaptured(family_cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fp8_on_cpu(monkeypatch)
    pipe = _pipeline("tiny-flux", torch.bfloat16)  # torchao's per-row float8 takes bf16 weights
    optimize_transformer(pipe, "compile", "cuda", quantize="fp8")
    assert type(pipe.transformer.transformer_blocks[0].ff.net[2].weight).__name__ == "Float8Tensor"
    assert _graphed(pipe) == ["text_encoder", "text_encoder_2"]


def test_nothing_is_graphed_on_a_cpu_device(family_cache: str) -> None:
    pipe = _pipeline("tiny-flux")
    assert optimize_transformer(pipe, "compile", "cpu") == (True, [])
    assert _graphed(pipe) == []


def test_a_lora_slot_keys_the_transformer_graphs(family_cache: str) -> None:
    pipe = _pipeline("tiny-flux")
    state = {"on": False}
    _, graphed = optimize_transformer(pipe, "compile", "cuda", lora_variant=lambda: state["on"])
    transformer = graphed[-1]
    assert transformer.module is pipe.transformer and transformer.variant is not None
    assert not pipe.transformer.transformer_blocks[0].attn.fused_projections  # the slot's layers stay


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_the_images_through_the_wrappers_are_the_eager_images(family_cache: str, model: str) -> None:
    def run(pipe: Any, seed: int) -> torch.Tensor:
        return pipe(prompt="a lighthouse", width=64, height=64, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(seed)).images

    eager, graphed = _pipeline(model), _pipeline(model)
    optimize_transformer(eager, "graphs", "cpu")  # fused QKV on both sides
    _, wrappers = optimize_transformer(graphed, "graphs", "cuda")
    wrappers.append(GraphedForward(graphed.transformer).install())  # the compiled path's wrapper, uncompiled
    for seed in (1, 2, 1):
        torch.testing.assert_close(run(graphed, seed), run(eager, seed), rtol=0, atol=0)
    assert all(len(w.entries) == 1 and w.fallbacks == 0 for w in wrappers)
