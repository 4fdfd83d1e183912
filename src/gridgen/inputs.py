"""Image inputs of a request: a start image (image-to-image) and an inpainting mask.

A request carries them as text, a ``data:image/...;base64,`` URL or bare base64 of a PNG,
JPEG or WebP file, so they travel in JSON, through the runner's codec and to every rank
once per request. This module decodes and checks them: on the host before a request is
queued (the request models' validators call :func:`check_image_input`, so a bad image is
an :class:`~gridgen.InvalidRequestError` naming the field) and on the ranks, which decode
them for the pipeline (:func:`decode_image_input`).

Masks follow diffusers: **white repaints, black keeps**, grey in between. OpenAI's edits
API says the opposite with transparency (fully transparent pixels are edited):
:func:`mask_from_alpha` converts such a mask, and ``/v1/images/edits`` applies it.

Limits (:data:`MAX_INPUT_SIDE`, :data:`MAX_INPUT_PIXELS`, :data:`MAX_INPUT_BYTES`) bound
what one input may cost to decode; the pipeline resizes the image (and the mask with it)
to the request's ``width`` x ``height``. A mask must have the image's size.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
from dataclasses import dataclass
from typing import Final

from PIL import Image

from .images import FORMATS, EncodedImage, sniff

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_INPUT_PIXELS",
    "MAX_INPUT_SIDE",
    "MIN_INPUT_SIDE",
    "ImageInfo",
    "ImageInputError",
    "check_image_input",
    "decode_image_input",
    "encoded_input",
    "input_data_url",
    "mask_from_alpha",
]

MAX_INPUT_BYTES: Final = 24 * 1024 * 1024
"""Largest encoded input image (24 MiB: a 4096x4096 photo as PNG is about 30 MB, a
2048x2048 one about 8 MB)."""
MAX_INPUT_SIDE: Final = 4096
"""Longest side of an input image, in pixels (it is resized to at most 2048 anyway)."""
MIN_INPUT_SIDE: Final = 8
MAX_INPUT_PIXELS: Final = MAX_INPUT_SIDE * MAX_INPUT_SIDE

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w=.+-]+)*;base64,", re.ASCII)


class ImageInputError(ValueError):
    """An input image broke a rule; ``rule`` names it (``image_base64``, ``image_format``,
    ``image_decode``, ``image_too_large``, ``image_too_small``)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class ImageInfo:
    """What the host learns from decoding an input once."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def encoded_input(value: str | bytes) -> EncodedImage:
    """The encoded file inside a data URL, bare base64 text or raw bytes (not decoded yet).

    Raises:
        ImageInputError: not base64, too many bytes, or not a PNG, JPEG or WebP file.
    """
    if isinstance(value, str):
        match = _DATA_URL.match(value)
        text = value[match.end():] if match else value
        if len(text) > MAX_INPUT_BYTES * 4 // 3 + 4:
            raise ImageInputError(
                "image_too_large", f"is over {MAX_INPUT_BYTES // (1024 * 1024)} MiB encoded"
            )
        try:
            data = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            hint = "a data:image/...;base64, URL or base64 text"
            raise ImageInputError("image_base64", f"is not {hint} of a PNG, JPEG or WebP file") from None
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise ImageInputError("image_base64", f"must be a string, not {type(value).__name__}")
    if len(data) > MAX_INPUT_BYTES:
        raise ImageInputError("image_too_large", f"is over {MAX_INPUT_BYTES // (1024 * 1024)} MiB encoded")
    try:
        return sniff(data)
    except ValueError:
        raise ImageInputError("image_format", "is not a PNG, JPEG or WebP file") from None


def decode_image_input(value: str | bytes) -> Image.Image:
    """Decode an input image (loaded in full), checking the size limits before decoding.

    Raises:
        ImageInputError: see :func:`encoded_input`; also a file that does not decode, or a
            side outside ``MIN_INPUT_SIDE .. MAX_INPUT_SIDE``.
    """
    encoded = encoded_input(value)
    try:
        image = Image.open(io.BytesIO(encoded.data), formats=[FORMATS[encoded.format].pil])
    except Exception as exc:
        raise ImageInputError("image_decode", f"does not decode as {encoded.format.upper()}: {exc}") from None
    width, height = image.size
    if max(width, height) > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        raise ImageInputError(
            "image_too_large", f"is {width}x{height} pixels; the limit is {MAX_INPUT_SIDE} per side"
        )
    if min(width, height) < MIN_INPUT_SIDE:
        raise ImageInputError(
            "image_too_small", f"is {width}x{height} pixels; at least {MIN_INPUT_SIDE} per side"
        )
    try:
        image.load()
    except Exception as exc:
        raise ImageInputError("image_decode", f"does not decode as {encoded.format.upper()}: {exc}") from None
    return image


@functools.lru_cache(maxsize=16)
def _checked(value: str) -> ImageInfo:
    image = decode_image_input(value)
    return ImageInfo(str(image.format or "").lower(), image.width, image.height, image.mode)


def check_image_input(value: str) -> ImageInfo:
    """Decode ``value`` once to prove it is a usable input image; its format, size and mode.

    The answer is remembered for the last few inputs (a request is validated more than
    once on the host: when it is queued and when it is merged).

    Raises:
        ImageInputError: see :func:`decode_image_input`.
    """
    if not isinstance(value, str):
        raise ImageInputError("image_base64", f"must be a string, not {type(value).__name__}")
    return _checked(value)


def input_data_url(image: Image.Image | EncodedImage) -> str:
    """A PNG ``data:`` URL for a PIL image (lossless), or an EncodedImage's own bytes."""
    if isinstance(image, Image.Image):
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        image = EncodedImage(out.getvalue(), "png")
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode('ascii')}"


def mask_from_alpha(mask: Image.Image) -> Image.Image:
    """OpenAI's mask convention to diffusers': an ``L`` mask, white where ``mask`` is fully
    transparent (edit there), black elsewhere.

    A mask without an alpha channel is taken as a diffusers mask already: its luminance,
    white repaints.
    """
    has_alpha = "A" in mask.getbands() or "transparency" in mask.info
    if not has_alpha:
        return mask.convert("L")
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0, mode="L")
