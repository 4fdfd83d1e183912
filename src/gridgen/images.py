"""Images on the wire and on the web: :class:`EncodedImage`, :func:`encode_image`, data URLs.

The one place that knows image formats: the codec (:mod:`gridgen._codec`), the SDXL
worker, the CLI and the server all take their formats, MIME types, file extensions
and encodings from here.


A PIL image is sent as ext 4 in this order of preference:

1. the image came out of :func:`decode` and its pixels were never loaded or changed:
   its original encoded bytes are sent again, unchanged (no re-encoding);
2. the image was opened from a JPEG or WebP file (``image.format``): it is re-encoded
   in that format (JPEG keeps the file's quantisation tables, WebP is lossless);
3. otherwise PNG with ``compress_level=1`` (fast, lossless). Modes PNG cannot store
   (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``F`` ...) are converted to ``RGB``, or to
   ``RGBA`` when the mode has alpha.

A worker that already holds encoded bytes, or wants JPEG/WebP, returns an
:class:`EncodedImage` (see :func:`encode_image`), which is sent as is.

On decode, an image is a ``PIL.Image.Image`` opened lazily from the bytes with
``Image.open(..., formats=[that format])``. Decoding checks the header, the declared
format, the container framing (PNG chunk CRCs and the ``IEND`` chunk, the WebP RIFF
size) and the size against ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression bombs are a
``CodecError``); the pixel data itself is decompressed by PIL on first access.
The original bytes stay available through :func:`get_encoded_image` (stored on the
image object as the attribute ``_gridgen_encoded``; not in ``image.info``, which PIL
copies into derived images). :func:`to_jsonable`, :func:`image_data_url` and
:func:`encode` use them as long as the image's pixels were never loaded and its size
and mode are unchanged; once the pixels are loaded (they could have been edited in
place) the image is encoded again.
"""

from __future__ import annotations

import base64
import io
import zlib
from dataclasses import dataclass
from typing import Any, Final, Literal

from PIL import Image

from .errors import CodecError

__all__ = [
    "FILE_SUFFIXES",
    "FORMATS",
    "EncodedImage",
    "ImageFormat",
    "encode_image",
    "format_of",
    "get_encoded_image",
    "image_bytes",
    "image_data_url",
    "keep_encoded",
    "sniff",
]

ImageFormat = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class _Format:
    name: ImageFormat
    pil: str  # PIL's format name
    mime: str
    extension: str  # file extension, without the dot


# The format table: every other module asks this one.
FORMATS: Final[dict[ImageFormat, _Format]] = {
    "png": _Format("png", "PNG", "image/png", "png"),
    "jpeg": _Format("jpeg", "JPEG", "image/jpeg", "jpg"),
    "webp": _Format("webp", "WEBP", "image/webp", "webp"),
}
# File name suffixes of each format.
FILE_SUFFIXES: Final[dict[str, ImageFormat]] = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
# Names accepted for a format (``"jpg"`` and upper case included).
_ALIASES: Final[dict[str, ImageFormat]] = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
STASH_ATTR: Final = "_gridgen_encoded"


def format_of(name: str) -> ImageFormat | None:
    """The canonical format for a name (``"JPG"`` -> ``"jpeg"``), or None when unknown."""
    return _ALIASES.get(str(name).lower().lstrip("."))


def stream_format(image_format: str) -> ImageFormat:
    """``add_streaming_result``'s ``image_format``, checked: the canonical name, or ValueError."""
    fmt = format_of(image_format)
    if fmt is None:
        raise ValueError(f"add_streaming_result: image_format must be 'jpeg', 'png' or 'webp', not {image_format!r}")
    return fmt


def encode_images_in(value: Any, fmt: ImageFormat) -> Any:
    """``value`` with each PIL image inside dicts, lists and tuples encoded as ``fmt``
    (what a worker streams; :class:`EncodedImage` values are left as they are)."""

    def walk(node: Any) -> Any:
        if isinstance(node, Image.Image):
            return encode_image(node, fmt)
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        if isinstance(node, (list, tuple)):
            items = [walk(item) for item in node]
            return items if isinstance(node, list) else tuple(items)
        return node

    return walk(value)



@dataclass(frozen=True, eq=True, repr=False)
class EncodedImage:
    """An image already encoded as PNG, JPEG or WebP.

    Return or stream one from a worker to send exactly these bytes (no re-encoding);
    it decodes on the other side as a ``PIL.Image.Image``. Build one with
    :func:`encode_image`, or from bytes you already have: ``EncodedImage(data, "jpeg")``.
    The bytes must start with the format's signature.
    """

    data: bytes
    format: ImageFormat

    def __post_init__(self) -> None:
        fmt = format_of(self.format)
        if fmt is None:
            raise ValueError(
                f"EncodedImage.format must be 'png', 'jpeg' or 'webp', not {self.format!r}"
            )
        data = self.data
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"EncodedImage.data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if not _has_signature(data, fmt):
            raise ValueError(f"EncodedImage.data does not start with a {fmt.upper()} signature")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "format", fmt)

    @property
    def mime_type(self) -> str:
        """``"image/png"``, ``"image/jpeg"`` or ``"image/webp"``."""
        return FORMATS[self.format].mime

    def open(self) -> Image.Image:
        """Open the bytes as a PIL image (lazily, like :func:`decode` does)."""
        return _open_image(self)

    def __repr__(self) -> str:
        return f"EncodedImage(format={self.format!r}, {len(self.data)} bytes)"


def sniff(data: bytes) -> EncodedImage:
    """The bytes of a PNG, JPEG or WebP file as an EncodedImage (format from its signature)."""
    for fmt in FORMATS:
        if _has_signature(data, fmt):
            return EncodedImage(data, fmt)
    raise ValueError("bytes are not a PNG, JPEG or WebP file")


def _has_signature(data: bytes, fmt: str) -> bool:
    if fmt == "png":
        return data.startswith(_PNG_SIGNATURE)
    if fmt == "jpeg":
        return data.startswith(b"\xff\xd8\xff")
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def encode_image(
    image: Image.Image, format: str = "png", quality: int | None = None
) -> EncodedImage:
    """Encode a PIL image once, to send or stream it without further encoding.

    Args:
        image: the image.
        format: ``"png"`` (lossless, ``compress_level=1``), ``"jpeg"`` (``"jpg"`` is
            accepted) or ``"webp"``.
        quality: JPEG or WebP quality, 1..100. ``None`` means 90 for JPEG (or the
            file's own tables for an image opened from a JPEG file) and *lossless* WebP.
            Ignored for PNG.

    JPEG cannot store alpha or most modes: such images are converted to ``RGB`` first.
    WebP stores ``RGB`` or ``RGBA`` only: other modes are converted.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"encode_image() takes a PIL image, not {type(image).__name__}")
    fmt = format_of(format)
    if fmt is None:
        raise ValueError(f"format must be 'png', 'jpeg' or 'webp', not {format!r}")
    if quality is not None and (type(quality) is not int or not 1 <= quality <= 100):
        raise ValueError(f"quality must be an int from 1 to 100, not {quality!r}")
    out = io.BytesIO()
    if fmt == "png":
        try:
            image.save(out, "PNG", compress_level=1)
        except (OSError, KeyError, ValueError):
            # A mode PNG cannot store (CMYK, YCbCr, LAB, HSV, F, ...).
            out = io.BytesIO()
            _to_rgb(image).save(out, "PNG", compress_level=1)
    elif fmt == "jpeg":
        keep = quality is None and image.format == "JPEG" and image.mode in ("L", "RGB", "CMYK")
        src = image if image.mode in ("L", "RGB", "CMYK") else image.convert("RGB")
        if keep:
            src.save(out, "JPEG", quality="keep", subsampling="keep")
        else:
            src.save(out, "JPEG", quality=90 if quality is None else quality)
    else:
        src = image if image.mode in ("RGB", "RGBA") else _to_rgb(image)
        if quality is None:
            src.save(out, "WEBP", lossless=True, quality=0, method=0, exact=True)
        else:
            src.save(out, "WEBP", quality=quality)
    return EncodedImage(out.getvalue(), fmt)


def _to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = any(band in ("A", "a") for band in image.getbands()) or (
        "transparency" in image.info
    )
    return image.convert("RGBA" if has_alpha else "RGB")


def get_encoded_image(image: Image.Image) -> EncodedImage | None:
    """The encoded bytes a decoded image was built from, while they still match it.

    Returns ``None`` for images that did not come out of :func:`decode`, and for decoded
    images whose pixels were loaded (and so may have been changed in place) or whose
    size or mode changed. Images derived from a decoded one (``copy()``, ``convert()``,
    ``resize()`` ...) never carry the bytes.
    """
    record = image.__dict__.get(STASH_ATTR)
    if record is None:
        return None
    encoded, size, mode = record
    if image.size != size or image.mode != mode or not _pixels_untouched(image):
        return None
    assert isinstance(encoded, EncodedImage)
    return encoded


def _pixels_untouched(image: Image.Image) -> bool:
    # PIL creates the core image (``_im``; ``im`` before Pillow 11) when the pixels are
    # loaded, and every read or in-place edit of pixels loads them first.
    attrs = image.__dict__
    core = attrs["_im"] if "_im" in attrs else attrs.get("im")
    return core is None


def _preferred_encoding(image: Image.Image) -> EncodedImage:
    encoded = get_encoded_image(image)
    if encoded is not None:
        return encoded
    fmt = image.format
    if fmt == "JPEG":
        return encode_image(image, "jpeg")
    if fmt == "WEBP":
        return encode_image(image, "webp")
    return encode_image(image, "png")


def image_data_url(image: Image.Image | EncodedImage) -> str:
    """A ``data:image/<format>;base64,...`` URL for a PIL image or an EncodedImage.

    A decoded image reuses its original bytes (see :func:`get_encoded_image`); other
    images are encoded as on the wire (PNG unless they came from a JPEG or WebP file).
    """
    if isinstance(image, EncodedImage):
        encoded = image
    elif isinstance(image, Image.Image):
        encoded = _preferred_encoding(image)
    else:
        raise TypeError(
            f"image_data_url() takes a PIL image or an EncodedImage, not {type(image).__name__}"
        )
    return f"data:{encoded.mime_type};base64,{base64.b64encode(encoded.data).decode('ascii')}"


def _check_png_framing(data: bytes) -> None:
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    end = len(data)
    while True:
        if pos + 12 > end:
            raise CodecError("PNG image is truncated (no IEND chunk)")
        length = int.from_bytes(view[pos : pos + 4], "big")
        chunk_end = pos + 12 + length
        if chunk_end > end:
            raise CodecError("PNG image is truncated (a chunk runs past the end)")
        crc = int.from_bytes(view[chunk_end - 4 : chunk_end], "big")
        if zlib.crc32(view[pos + 4 : chunk_end - 4]) != crc:
            raise CodecError("PNG image is corrupt (chunk CRC mismatch)")
        is_end = data[pos + 4 : pos + 8] == b"IEND"
        pos = chunk_end
        if is_end:
            break
    if pos != end:
        raise CodecError(f"PNG image has {end - pos} bytes after its IEND chunk")


def _check_framing(encoded: EncodedImage) -> None:
    data = encoded.data
    if encoded.format == "png":
        _check_png_framing(data)
    elif encoded.format == "webp":
        riff_size = int.from_bytes(data[4:8], "little")
        if riff_size + 8 != len(data):
            raise CodecError(
                f"WebP image is truncated or padded: RIFF size says {riff_size + 8} bytes, "
                f"got {len(data)}"
            )


def _open_image(encoded: EncodedImage) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(encoded.data), formats=[FORMATS[encoded.format].pil])
    except Image.DecompressionBombError as exc:
        raise CodecError(f"image rejected as a decompression bomb: {exc}") from exc
    except Exception as exc:
        raise CodecError(f"corrupt {encoded.format.upper()} image: {exc}") from exc
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        # PIL only warns between 1x and 2x the limit; we refuse.
        image.close()
        raise CodecError(
            f"image of {width}x{height} pixels is over PIL.Image.MAX_IMAGE_PIXELS ({limit}): "
            "rejected as a possible decompression bomb"
        )
    return image




def image_bytes(image: Image.Image | EncodedImage) -> EncodedImage:
    """The encoded form of an image: an EncodedImage as is, a decoded image's original
    bytes while they still match it, else the encoding used on the wire."""
    if isinstance(image, EncodedImage):
        return image
    if isinstance(image, Image.Image):
        return _preferred_encoding(image)
    raise TypeError(f"expected a PIL image or an EncodedImage, not {type(image).__name__}")


def keep_encoded(value: Any) -> Any:
    """Images off the wire (also inside a list) as their original encoded bytes, so that a
    data URL keeps the format the worker chose (JPEG stays JPEG) and skips re-encoding."""
    if isinstance(value, list):
        return [keep_encoded(item) for item in value]
    if isinstance(value, Image.Image):
        encoded = get_encoded_image(value)
        return value if encoded is None else encoded
    return value
