"""The official ``openai`` Python SDK against a real ``gridgen serve`` (tiny SDXL, two CPU
ranks, an API key): generations as b64_json and as URLs, JPEG output, streamed partial
images, edits with and without a mask, models.list(), and each client error as the SDK's exception class.

One server for the module; 64x64 images, 2 to 4 steps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from helpers.openai_edits import check_edit_with_mask, check_edit_without_mask
from helpers.serve import gridgen_serve

openai = pytest.importorskip("openai")

KEY = "test-key-22"
FAST = {"num_inference_steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def url(tiny_cache: str) -> Iterator[str]:
    with gridgen_serve("--model", "tiny", "--workers", "2", "--api-key", KEY, "--api-key", "second-key") as base:
        yield base


@pytest.fixture
def client(url: str) -> object:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(data))


def test_generate_b64_json_in_openais_shape(client: object) -> None:
    result = client.images.generate(prompt="a lighthouse", size="64x64", n=2, extra_body=FAST)  # type: ignore[attr-defined]
    assert isinstance(result.created, int) and result.created > 1_700_000_000
    assert len(result.data) == 2 and all(d.url is None for d in result.data)
    images = [_png(d.b64_json) for d in result.data]
    assert [i.size for i in images] == [(64, 64), (64, 64)]
    assert images[0].tobytes() != images[1].tobytes()  # seeds 7 and 8
    assert result.size == "64x64" and result.output_format == "png"
    assert result.usage is None  # no honest token count for a diffusion model


def test_the_same_seed_gives_the_same_image_as_gridgens_own_route(client: object, url: str) -> None:
    via_sdk = client.images.generate(prompt="same", size="64x64", extra_body=FAST)  # type: ignore[attr-defined]
    own = httpx.post(
        f"{url}/generate", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
        json={"prompt": "same", "width": 64, "height": 64, "num_images": 1, "output": "images", **FAST},
    )
    assert own.status_code == 200, own.text
    own_png = base64.b64decode(own.json()["images"][0].split(",", 1)[1])
    assert _png(via_sdk.data[0].b64_json).tobytes() == Image.open(io.BytesIO(own_png)).tobytes()


def test_url_images_are_served_with_the_key_and_only_with_it(client: object) -> None:
    result = client.images.generate(  # type: ignore[attr-defined]
        prompt="a url", size="64x64", response_format="url", extra_body=FAST
    )
    (item,) = result.data
    assert item.b64_json is None and "/v1/images/files/" in item.url
    fetched = httpx.get(item.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    assert httpx.get(item.url, timeout=30).status_code == 401
    missing = httpx.get(item.url.rsplit("/", 1)[0] + "/nothing.png", headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_found"


@pytest.mark.parametrize(("fmt", "compression", "magic"), [("jpeg", None, b"\xff\xd8\xff"), ("webp", 40, b"RIFF")])
def test_output_format_and_compression(client: object, fmt: str, compression: int | None, magic: bytes) -> None:
    extra = {} if compression is None else {"output_compression": compression}
    result = client.images.generate(  # type: ignore[attr-defined]
        prompt="formats", size="64x64", output_format=fmt, extra_body=FAST, **extra
    )
    data = base64.b64decode(result.data[0].b64_json)
    assert data.startswith(magic) and result.output_format == fmt
    assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_streaming_partial_images_then_completed(client: object) -> None:
    stream = client.images.generate(  # type: ignore[attr-defined]
        prompt="streamed", size="64x64", stream=True, partial_images=2,
        extra_body={"num_inference_steps": 4, "seed": 3},
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for event in events[:2]:
        assert base64.b64decode(event.b64_json).startswith(b"\x89PNG")  # the requested format
    final = events[-1]
    assert final.size == "64x64" and final.output_format == "png" and _png(final.b64_json).size == (64, 64)


def test_streaming_with_no_partial_images_sends_only_the_result(client: object) -> None:
    events = list(client.images.generate(  # type: ignore[attr-defined]
        prompt="one event", size="64x64", stream=True, partial_images=0, extra_body=FAST,
    ))
    assert [e.type for e in events] == ["image_generation.completed"]


def test_models_list_and_retrieve(client: object) -> None:
    models = client.models.list()  # type: ignore[attr-defined]
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "gridgen"
    assert client.models.retrieve("tiny").id == "tiny"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")  # type: ignore[attr-defined]


def test_a_wrong_or_missing_key_is_an_authentication_error(url: str) -> None:
    for key in ("wrong", "test-key-2"):  # a prefix of the real key is just as wrong
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.images.generate(prompt="x", size="64x64")
        assert caught.value.code == "invalid_api_key"
    second = openai.OpenAI(base_url=f"{url}/v1", api_key="second-key", max_retries=0)
    assert [m.id for m in second.models.list().data] == ["tiny"]  # every configured key works
    assert httpx.post(f"{url}/generate", json={"prompt": "x"}).status_code == 401  # gridgen's own routes too
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the playground page asks for the key itself


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"size": "65x64"}, "size", "multiple_of"),
        ({"size": "big"}, "size", "invalid_size"),
        ({"n": 0}, "n", "greater_than_equal"),
        ({"prompt": "   "}, "prompt", "value_error"),
        ({"output_format": "gif"}, "output_format", "literal_error"),
        ({"extra_body": {"num_inference_steps": 2, "eta": 1}}, "eta", "extra_forbidden"),
        ({"extra_body": {"strength": 0.5, "num_inference_steps": 2}}, None, None),
    ],
)
def test_bad_parameters_are_bad_request_errors_naming_the_parameter(
    client: object, kwargs: dict[str, object], param: str | None, code: str | None
) -> None:
    arguments: dict[str, object] = {"prompt": "x", "size": "64x64", "extra_body": FAST, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(**arguments)  # type: ignore[attr-defined]
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    if param is not None:
        assert (error["param"], error["code"]) == (param, code), error


def test_an_unknown_model_is_not_found(client: object) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(prompt="x", model="gpt-image-1", size="64x64")  # type: ignore[attr-defined]
    assert caught.value.body["param"] == "model" and caught.value.code == "model_not_found"


def test_a_body_over_the_limit_is_413_in_openais_shape(url: str) -> None:
    response = httpx.post(
        f"{url}/v1/images/generations", headers={"Authorization": f"Bearer {KEY}"},
        content=b'{"prompt": "' + b"x" * (33 << 20) + b'"}', timeout=60,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_edit_without_a_mask_is_image_to_image(client: object) -> None:
    check_edit_without_mask(client)


def test_edit_with_openais_mask_is_inpainting_with_diffusers_mask(client: object, url: str) -> None:
    check_edit_with_mask(client, url, KEY)
