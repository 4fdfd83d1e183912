"""GraphedForward on CPU: the static-buffer path that CUDA replays run, keyed on the whole
argument tree (the capture itself needs a GPU and is measured in bench/family_levers.py)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from gridgen.diffusion.graphed import GraphedForward


class Denoiser(torch.nn.Module):
    """Arguments like FLUX.1's transformer: tensors by keyword, None, a flag, a model output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.calls = 0

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, guidance: torch.Tensor | None = None,
                joint_attention_kwargs: Any = None, return_dict: bool = True) -> Any:
        self.calls += 1
        out = self.linear(hidden_states) * timestep[:, None, None]
        if guidance is not None:
            out = out + guidance[:, None, None]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def _inputs(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"hidden_states": torch.randn(batch, 3, 4, generator=g), "timestep": torch.rand(batch, generator=g)}


@torch.no_grad()
def test_replays_give_the_eager_outputs_for_new_inputs_of_a_known_shape() -> None:
    model = Denoiser()
    expected = [model(**_inputs(2, seed), return_dict=False)[0] for seed in range(3)]
    wrapper = GraphedForward(model).install()
    got = [model(**_inputs(2, seed), return_dict=False)[0] for seed in range(3)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(wrapper.entries) == 1 and wrapper.fallbacks == 0


@torch.no_grad()
def test_each_output_is_its_own_tensor_so_a_kept_output_survives_the_next_call() -> None:
    model = Denoiser()
    GraphedForward(model).install()
    first = model(**_inputs(1, 0)).sample
    kept = first.clone()
    second = model(**_inputs(1, 1)).sample
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert not torch.equal(first, second)
    assert isinstance(model(**_inputs(1, 2)), Transformer2DModelOutput)


@torch.no_grad()
def test_shapes_dtypes_flags_and_none_each_key_their_own_entry() -> None:
    model = Denoiser()
    wrapper = GraphedForward(model).install()
    model(**_inputs(1, 0))
    model(**_inputs(2, 0))
    model(**_inputs(2, 0), return_dict=False)
    model(**_inputs(2, 0), guidance=torch.ones(2))
    model(**_inputs(2, 1))  # a key seen before
    assert len(wrapper.entries) == 4
    guided = model(**_inputs(2, 5), guidance=torch.full((2,), 3.0)).sample
    wrapper.uninstall()
    torch.testing.assert_close(guided, model(**_inputs(2, 5), guidance=torch.full((2,), 3.0)).sample, rtol=0, atol=0)


@torch.no_grad()
def test_an_argument_that_cannot_be_keyed_runs_eager() -> None:
    model = Denoiser()
    wrapper = GraphedForward(model).install()
    model(**_inputs(1, 0), joint_attention_kwargs={"scale": object()})
    assert wrapper.fallbacks == 1 and not wrapper.entries


@torch.no_grad()
def test_the_variant_is_part_of_the_key() -> None:
    model = Denoiser()
    state = {"slot": False}
    wrapper = GraphedForward(model, variant=lambda: state["slot"]).install()
    model(**_inputs(1, 0))
    state["slot"] = True
    model(**_inputs(1, 0))
    assert len(wrapper.entries) == 2


@torch.no_grad()
def test_uninstall_gives_the_eager_forward_back() -> None:
    model = Denoiser()
    wrapper = GraphedForward(model).install()
    model(**_inputs(1, 0))
    wrapper.uninstall()
    calls = model.calls
    model(**_inputs(1, 0))
    assert model.calls == calls + 1 and not wrapper.entries and "forward" not in model.__dict__
