"""Request validation: every rule names its field; every rank rejects a bad request before any work."""

from __future__ import annotations

from typing import Any

import pytest

from gridgen import DistributedRunner, WorkerError
from gridgen.sdxl import GenerateRequest, InvalidRequestError, SDXLWorker, validate_request

from helpers.sdxl import SMALL


def test_defaults() -> None:
    request = validate_request({"prompt": "a cat"})
    assert request.model_dump() == {
        "prompt": "a cat",
        "negative_prompt": "",
        "num_images": None,
        "width": 1024,
        "height": 1024,
        "num_inference_steps": 20,
        "guidance_scale": 5.0,
        "seed": None,
        "preview_every": 5,
        "image_format": "png",
        "output": "grid",
        "image": None,  # text-to-image
        "strength": None,
        "mask": None,
        "loras": (),
    }
    assert validate_request({"prompt": "a cat"}, world_size=4).num_images == 4
    assert validate_request({"prompt": "a cat", "num_images": 3}, world_size=4).num_images == 3
    assert validate_request({"prompt": "x", "seed": 2**63 - 1}).seed == 2**63 - 1


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"prompt": "   "}, "prompt", "must not be empty"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "x" * 2001}, "prompt", "at most 2000 characters"),
        ({"negative_prompt": "x" * 2001}, "negative_prompt", "at most 2000 characters"),
        ({"num_images": 0}, "num_images", "greater than or equal to 1"),
        ({"num_images": 65}, "num_images", "less than or equal to 64"),
        ({"width": 100}, "width", "multiple of 8"),
        ({"width": 56}, "width", "greater than or equal to 64"),
        ({"height": 2056}, "height", "less than or equal to 2048"),
        ({"num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
        ({"num_inference_steps": 151}, "num_inference_steps", "less than or equal to 150"),
        ({"guidance_scale": 30.5}, "guidance_scale", "less than or equal to 30"),
        ({"guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"seed": 2**63}, "seed", "less than or equal to"),
        ({"preview_every": 151}, "preview_every", "less than or equal to 150"),
        ({"image_format": "gif"}, "image_format", "'png', 'jpeg' or 'webp'"),
        ({"output": "zip"}, "output", "'grid', 'images' or 'both'"),
        ({"width": True}, "width", "not a boolean"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "valid integer"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_each_rule_names_its_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_request({"prompt": "a cat", **change})
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.fields == [field]
    assert f"{field}: " in str(error) and words in str(error)


def test_all_broken_fields_are_reported_together() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_request({"width": 65, "height": 4096, "extra": 1})
    assert caught.value.fields == ["prompt", "width", "height", "extra"]
    assert "prompt: is required" in str(caught.value)
    assert [e.rule for e in caught.value.errors] == [
        "missing",
        "multiple_of",
        "less_than_equal",
        "extra_forbidden",
    ]


def test_not_a_mapping_and_models_pass_through() -> None:
    with pytest.raises(InvalidRequestError, match="request: must be a mapping"):
        validate_request(["prompt"])  # type: ignore[arg-type]
    model = GenerateRequest(prompt="x", seed=3)
    assert validate_request(model, world_size=2) == model.model_copy(update={"num_images": 2})


def test_the_direct_worker_validates_before_any_work(
    direct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "pipeline", None)  # any model work would fail differently
    with pytest.raises(InvalidRequestError, match="width"):
        direct(**{**SMALL, "width": 63})


def test_the_host_rejects_a_bad_request_before_queueing_and_the_group_carries_on(sdxl2: Any) -> None:
    pids = sdxl2.runner.pids
    with pytest.raises(InvalidRequestError) as caught:  # batch_key validates at submit
        sdxl2.invoke({**SMALL, "num_images": 100, "strength": 0.5})
    assert not isinstance(caught.value, WorkerError)  # no rank saw it
    assert {e.field for e in caught.value.errors} >= {"num_images", "strength"}
    assert sdxl2.runner.pids == pids
    assert sdxl2.invoke({**SMALL, "num_images": 1})["num_images"] == 1


class UnmergedSDXL(SDXLWorker):
    """Declares no batch key, so requests reach the ranks unchecked by the host."""

    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> None:
        return None


def test_every_rank_rejects_a_bad_request_and_the_group_carries_on(tiny_cache: str) -> None:
    runner = DistributedRunner(UnmergedSDXL, world_size=2, device="cpu")
    with runner.sync(model="tiny") as sync:
        pids = sync.runner.pids
        with pytest.raises(WorkerError) as caught:
            sync.invoke({**SMALL, "num_images": 100, "strength": 0.5})
        error = caught.value
        assert error.remote_type.endswith("InvalidRequestError")
        assert "num_images" in error.remote_message and "strength" in error.remote_message
        assert sync.runner.pids == pids  # no rank was left in a collective: nothing restarted
        assert sync.invoke({**SMALL, "num_images": 1})["num_images"] == 1
