"""``/v1/images/edits`` on FLUX.1 (tiny, two CPU ranks) through the official ``openai`` SDK:
image-to-image, and inpainting with OpenAI's transparent-means-edit mask. SDXL's are in
test_openai_sdk.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.openai_edits import check_edit_with_mask, check_edit_without_mask
from helpers.serve import gridgen_serve

openai = pytest.importorskip("openai")

KEY = "flux-key-22"


@pytest.fixture(scope="module")
def url(family_cache: str) -> Iterator[str]:
    with gridgen_serve("--model", "tiny-flux", "--workers", "2", "--api-key", KEY) as base:
        yield base


@pytest.fixture
def client(url: str) -> object:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_edit_without_a_mask_is_image_to_image(client: object) -> None:
    check_edit_without_mask(client)


def test_edit_with_openais_mask_is_inpainting_with_diffusers_mask(client: object, url: str) -> None:
    check_edit_with_mask(client, url, KEY)


def test_a_mask_of_another_size_is_a_bad_request_naming_it(client: object) -> None:
    from PIL import Image

    from helpers.openai_edits import png, start_png

    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("s.png", start_png(), "image/png"),  # type: ignore[attr-defined]
                           mask=("m.png", png(Image.new("RGBA", (32, 32))), "image/png"), prompt="x")
    assert caught.value.body["param"] == "mask" and caught.value.body["code"] == "mask_size"
