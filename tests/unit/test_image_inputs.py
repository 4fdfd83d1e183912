"""Image inputs (gridgen.inputs): decoding and limits, and OpenAI's mask convention."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gridgen.inputs import (
    MAX_INPUT_SIDE,
    ImageInputError,
    check_image_input,
    decode_image_input,
    input_data_url,
    mask_from_alpha,
)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_a_data_url_bare_base64_and_bytes_decode_alike() -> None:
    image = Image.new("RGB", (24, 16), (10, 200, 30))
    data = _png(image)
    text = base64.b64encode(data).decode()
    for value in (f"data:image/png;base64,{text}", text, data):
        decoded = decode_image_input(value)
        assert decoded.size == (24, 16) and decoded.getpixel((3, 3)) == (10, 200, 30)
    info = check_image_input(input_data_url(image))
    assert (info.format, info.size, info.mode) == ("png", (24, 16), "RGB")


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("not base64 at all!", "image_base64"),
        (base64.b64encode(b"GIF89a" + b"\0" * 40).decode(), "image_format"),
        (base64.b64encode(_png(Image.new("RGB", (32, 32)))[:60]).decode(), "image_decode"),
        (base64.b64encode(_png(Image.new("L", (MAX_INPUT_SIDE + 1, 8)))).decode(), "image_too_large"),
        (base64.b64encode(_png(Image.new("RGB", (4, 64)))).decode(), "image_too_small"),
    ],
)
def test_bad_inputs_name_the_rule(value: str, rule: str) -> None:
    with pytest.raises(ImageInputError) as caught:
        check_image_input(value)
    assert caught.value.rule == rule


def test_openai_masks_edit_where_fully_transparent() -> None:
    mask = Image.new("RGBA", (4, 1), (0, 0, 0, 255))
    mask.putpixel((1, 0), (0, 0, 0, 0))     # transparent: edit
    mask.putpixel((2, 0), (255, 255, 255, 1))  # almost transparent: keep
    converted = mask_from_alpha(mask)
    assert converted.mode == "L" and list(converted.tobytes()) == [0, 255, 0, 0]
    grey = Image.new("L", (2, 1), 200)  # no alpha: already white-repaints
    assert list(mask_from_alpha(grey).tobytes()) == [200, 200]
