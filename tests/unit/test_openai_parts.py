"""The OpenAI routes' pure parts: parameters to payload, partial-image spacing, the URL
store's bounds, API keys."""

from __future__ import annotations

import pytest
from PIL import Image

from gridgen.images import encode_image
from gridgen.server.auth import api_keys_from, key_matches
from gridgen.server.image_store import ImageStore
from gridgen.server.openai_errors import OpenAIError
from gridgen.server.openai_params import (
    EditParams,
    GenerationParams,
    auto_size_of,
    parse_params,
    partial_image_steps,
    to_payload,
)


def _payload(**raw: object) -> dict[str, object]:
    params = parse_params({"prompt": "p", **raw}, GenerationParams)
    return to_payload(params, default_size=(1024, 1024), default_steps=20, worker_format="png")


def test_parameters_become_the_families_request() -> None:
    assert _payload() == {
        "prompt": "p", "num_images": 1, "width": 1024, "height": 1024, "image_format": "png",
        "output": "images", "preview_every": 0,
    }
    payload = _payload(size="512x768", n=3, seed=5, num_inference_steps=8, negative_prompt="blur",
                       quality="high", style="vivid", user="u1", background="auto")
    assert (payload["width"], payload["height"], payload["num_images"]) == (512, 768, 3)
    assert (payload["seed"], payload["num_inference_steps"], payload["negative_prompt"]) == (5, 8, "blur")
    assert "quality" not in payload and "user" not in payload
    assert _payload(stream=True, partial_images=3, num_inference_steps=20)["preview_every"] == 5
    assert _payload(stream=False, partial_images=3)["preview_every"] == 0


def test_unknown_and_bad_parameters_are_400s_naming_them() -> None:
    for raw, param in (({"foo": 1}, "foo"), ({"n": 0}, "n"), ({"partial_images": 4}, "partial_images"),
                       ({}, "prompt")):
        body = {"prompt": "p", **raw} if param != "prompt" else raw
        with pytest.raises(OpenAIError) as caught:
            parse_params(body, GenerationParams)
        assert (caught.value.status, caught.value.param) == (400, param)
    with pytest.raises(OpenAIError) as caught:
        _payload(size="1024")
    assert caught.value.param == "size"


def test_partial_images_are_spaced_over_the_steps() -> None:
    assert [partial_image_steps(n, 20) for n in (1, 2, 3)] == [10, 6, 5]
    assert partial_image_steps(3, 2) == 1  # fewer steps than partial images: every step


def test_edit_auto_size_keeps_the_input_within_limits() -> None:
    assert auto_size_of((640, 480)) == (640, 480)
    assert auto_size_of((100, 70)) == (96, 64)
    assert auto_size_of((4000, 3000)) == (2048, 1536)
    assert auto_size_of((20, 20)) == (64, 64)


def test_the_url_store_is_bounded_by_count_bytes_and_time() -> None:
    now = [0.0]
    image = encode_image(Image.new("RGB", (8, 8)), "png")
    store = ImageStore(max_images=2, max_bytes=10 * len(image.data), ttl=60, clock=lambda: now[0])
    first, second = store.add(image), store.add(image)
    assert first.endswith(".png") and first != second and store.get(first) == image
    third = store.add(image)  # over the count: the oldest goes
    assert store.get(first) is None and store.get(second) is not None and len(store) == 2
    now[0] = 61.0
    assert store.get(third) is None and len(store) == 0 and store.bytes == 0
    small = ImageStore(max_images=10, max_bytes=len(image.data) * 2)
    names = [small.add(image) for _ in range(3)]
    assert small.get(names[0]) is None and small.bytes == 2 * len(image.data)


def test_api_keys_from_flags_and_environment() -> None:
    env = {"GRIDGEN_API_KEY": "a, b ,,"}
    assert api_keys_from(["c", "a"], env) == ["c", "a", "b"]
    assert api_keys_from(None, {}) == []
    with pytest.raises(ValueError):
        api_keys_from(["has space"], {})
    keys = [b"alpha", b"beta"]
    assert key_matches("beta", keys) and not key_matches("bet", keys) and not key_matches("", keys)


def test_partial_images_of_an_edit_are_spaced_over_the_steps_the_strength_keeps() -> None:
    params = parse_params({"prompt": "p", "stream": True, "partial_images": 3, "num_inference_steps": 20,
                           "strength": 0.6}, EditParams)
    payload = to_payload(params, default_size=(64, 64), default_steps=20, worker_format="png", image="data:x")
    assert payload["preview_every"] == 3  # 12 of the 20 steps run: previews at 3, 6, 9 before the last
    inpaint = to_payload(parse_params({"prompt": "p", "stream": True, "partial_images": 3}, EditParams),
                         default_size=(64, 64), default_steps=20, worker_format="png", image="data:x", mask="data:y")
    assert inpaint["preview_every"] == 5  # inpainting's default strength 1.0 runs all 20
