"""The gridgen wire codec: msgpack plus four extension types.

Everything the host and the workers send each other over ZeroMQ (requests, results,
stream items, errors) is one msgpack document encoded by :func:`encode` and read back
by :func:`decode`. Nothing on any socket is ever unpickled, evaluated or imported from:
the decoder builds only the plain values and the four extension types described here,
and rejects everything else with :class:`~gridgen.errors.CodecError`.

Plain values
------------

=====================================  ======================================================
Python value                           on the wire (msgpack, ``use_bin_type=True``)
=====================================  ======================================================
``None``, ``bool``, ``str``, ``float``  nil, bool, str (UTF-8), float 64
``int``                                int, within ``-2**63 .. 2**64 - 1``; a bigger int is a
                                       ``TypeError`` (send it as a ``str``)
``bytes``, ``bytearray``,              bin; always decoded as ``bytes``
``memoryview`` (C-contiguous)
``list``                               array; decoded as ``list``
``dict``                               map; keys may be any hashable value listed here
                                       (``str``, ``int``, ``bytes``, ``tuple`` ...); decoded as
                                       ``dict`` with the same keys
``tuple``                              ext 1 (below); decoded as ``tuple``
numpy scalars (``np.float32(1.0)``,    the plain Python number (``.item()``); numpy complex
``np.int64(3)``, ``np.bool_``)         scalars are rejected (use a 0-d array)
=====================================  ======================================================

Subclasses of ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float`` and ``bytes``
(``OrderedDict``, named tuples, ``IntEnum`` members, ``np.str_`` ...) are sent as their
base type and come back as the base type. Anything else raises ``TypeError`` naming the
type and where it sits inside the value, for example
``cannot encode result['images'][2]: ...``.

Extension types
---------------

Every extension payload that carries a buffer starts with a small msgpack *header*
(one msgpack value, at most 1024 bytes) followed immediately by the raw bytes, so a
reader parses the header and takes the rest of the payload as the buffer.

``ext 1: tuple``
    payload: one msgpack array holding the items, each encoded by these same rules.
    Decoded as a ``tuple``, so values round-trip exactly (``(1, 2) != [1, 2]``).

``ext 2: numpy array``
    payload: header ``[dtype: str, shape: array of uint]``, then the elements in C order,
    little-endian, exactly ``prod(shape) * itemsize`` bytes.
    Decoded as a writeable ``numpy.ndarray`` (a fresh copy) with the same dtype and shape.

``ext 3: torch tensor``
    payload: same layout as ext 2. ``bfloat16`` elements are sent as their 16-bit
    pattern. Tensors are detached and moved to the CPU on encode (CUDA tensors included);
    they decode as contiguous CPU tensors with the same dtype and shape (``requires_grad``
    is not kept). torch is imported only when a tensor is encoded or decoded: a host that
    never sees one never imports torch.

``ext 4: image``
    payload: header ``format: str`` (``"png"``, ``"jpeg"`` or ``"webp"``), then the
    encoded image file, as is.

Dtype names (ext 2 and 3), a whitelist of numeric types only: ``bool``, ``int8``,
``int16``, ``int32``, ``int64``, ``uint8``, ``uint16``, ``uint32``, ``uint64``,
``float16``, ``float32``, ``float64``, ``complex64``, ``complex128``, and ``bfloat16``
for tensors only. Object, string, structured, datetime and other dtypes are a
``TypeError`` on encode and a ``CodecError`` on decode. Big-endian numpy arrays are
*normalised*: they are converted to little-endian on encode and decode as native
(little-endian) arrays with equal values. Non-contiguous arrays and tensors are made
contiguous on encode. Bool buffers must hold only the bytes 0 and 1.

Codes 1..4 are the only extension codes; any other code, including msgpack's own
timestamp (-1), is a ``CodecError``.

Images
------

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

JSON
----

:func:`to_jsonable` turns a value into JSON-native data for server-sent events and
HTTP responses: images become ``data:image/<format>;base64,...`` URLs (keeping the
encoded format where known), arrays and tensors nested lists (complex elements as
``[real, imag]`` pairs), bytes base64 strings, tuples lists, dict keys strings, and
non-finite floats ``None``. :func:`text_event` frames that as one SSE ``data:`` event.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import sys
import threading
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import msgpack
import numpy as np
from PIL import Image

from .errors import CodecError, PayloadTooLarge

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXT_IMAGE",
    "EXT_NDARRAY",
    "EXT_TENSOR",
    "EXT_TUPLE",
    "EncodedImage",
    "ImageFormat",
    "decode",
    "encode",
    "encode_image",
    "get_encoded_image",
    "image_data_url",
    "text_event",
    "to_jsonable",
]

EXT_TUPLE: Final = 1
EXT_NDARRAY: Final = 2
EXT_TENSOR: Final = 3
EXT_IMAGE: Final = 4

ImageFormat = Literal["png", "jpeg", "webp"]

_SUPPORTED = (
    "dicts, lists, tuples, str, int, float, bool, None, bytes, PIL images, "
    "numpy arrays or torch tensors"
)
_MAX_HEADER: Final = 1024
_MAX_NDIM: Final = 64
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_STASH_ATTR: Final = "_gridgen_encoded"
# Each tuple level is a nested msgpack pack/unpack with its own C context (about 40 KiB
# of C stack when unpacking), so tuple-in-tuple nesting is bounded well below what a
# thread's stack holds. Lists and dicts are bounded by msgpack itself.
_MAX_TUPLE_DEPTH: Final = 32

_NUMERIC_DTYPE_NAMES: Final = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)
# Wire dtype name -> little-endian numpy dtype of the buffer.
_WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    name: np.dtype(name).newbyteorder("<") for name in _NUMERIC_DTYPE_NAMES
}
_TORCH_DTYPE_NAMES: Final = frozenset((*_NUMERIC_DTYPE_NAMES, "bfloat16"))
_BF16_CARRIER: Final = np.dtype("<i2")

_FORMATS: Final[dict[str, ImageFormat]] = {
    "png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "webp": "webp",
}
_PIL_FORMAT: Final[dict[str, str]] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- images


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
        fmt = _FORMATS.get(str(self.format).lower())
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
        return f"image/{self.format}"

    def open(self) -> Image.Image:
        """Open the bytes as a PIL image (lazily, like :func:`decode` does)."""
        return _open_image(self)

    def __repr__(self) -> str:
        return f"EncodedImage(format={self.format!r}, {len(self.data)} bytes)"


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
    fmt = _FORMATS.get(str(format).lower())
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
    record = image.__dict__.get(_STASH_ATTR)
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
        image = Image.open(io.BytesIO(encoded.data), formats=[_PIL_FORMAT[encoded.format]])
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


def _decode_image(payload: bytes) -> Image.Image:
    header, offset = _read_header(payload)
    if type(header) is not str or header not in _PIL_FORMAT:
        raise CodecError(f"image ext: unknown image format {header!r}")
    try:
        encoded = EncodedImage(payload[offset:], header)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CodecError(f"image ext: {exc}") from exc
    _check_framing(encoded)
    image = _open_image(encoded)
    setattr(image, _STASH_ATTR, (encoded, image.size, image.mode))
    return image


# --------------------------------------------------------------------------- encode


class _EncodeFailure(Exception):
    """Raised inside the msgpack ``default`` hook; ``encode`` adds the path."""

    def __init__(self, obj: object, reason: str, error: type[Exception] = TypeError) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason
        self.error = error


def _unsupported(obj: object) -> _EncodeFailure:
    cls = type(obj)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return _EncodeFailure(
        obj, f"objects of type {name} are not supported; return {_SUPPORTED} instead"
    )


def _header_and_buffer(header: list[Any], buffer: np.ndarray[Any, Any]) -> bytes:
    return b"".join((msgpack.packb(header, use_bin_type=True), buffer.data))


def _ndarray_ext(arr: np.ndarray[Any, Any]) -> msgpack.ExtType:
    name = arr.dtype.name
    wire = _WIRE_DTYPES.get(name)
    if wire is None or arr.dtype.fields is not None:
        raise _EncodeFailure(
            arr,
            f"numpy arrays of dtype {arr.dtype} are not supported; "
            f"use one of {', '.join(_NUMERIC_DTYPE_NAMES)}",
        )
    if arr.dtype != wire:  # big-endian: normalised to little-endian
        arr = arr.astype(wire)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return msgpack.ExtType(EXT_NDARRAY, _header_and_buffer([name, list(arr.shape)], arr))


def _torch() -> Any:
    import torch

    return torch


def _tensor_to_numpy(tensor: torch.Tensor) -> tuple[str, np.ndarray[Any, Any]]:
    """(wire dtype name, contiguous CPU numpy array holding the tensor's bytes)."""
    torch = _torch()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPE_NAMES:
        raise _EncodeFailure(
            tensor,
            f"torch tensors of dtype {tensor.dtype} are not supported; "
            f"use one of {', '.join(sorted(_TORCH_DTYPE_NAMES))}",
        )
    if tensor.layout != torch.strided:
        raise _EncodeFailure(
            tensor, f"torch tensors with layout {tensor.layout} are not supported; send .to_dense()"
        )
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    if name == "bfloat16":
        t = t.view(torch.int16)
    return name, t.numpy()


def _tensor_ext(tensor: torch.Tensor) -> msgpack.ExtType:
    try:
        name, arr = _tensor_to_numpy(tensor)
    except _EncodeFailure:
        raise
    except Exception as exc:
        raise _EncodeFailure(
            tensor, f"this tensor cannot be copied to the CPU: {exc}", ValueError
        ) from exc
    return msgpack.ExtType(EXT_TENSOR, _header_and_buffer([name, list(tensor.shape)], arr))


def _image_ext(image: Image.Image | EncodedImage) -> msgpack.ExtType:
    if isinstance(image, EncodedImage):
        encoded = image
    else:
        try:
            encoded = _preferred_encoding(image)
        except Exception as exc:
            raise _EncodeFailure(
                image, f"this PIL image cannot be encoded: {exc}", ValueError
            ) from exc
    header = msgpack.packb(encoded.format, use_bin_type=True)
    return msgpack.ExtType(EXT_IMAGE, header + encoded.data)


def _is_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")  # not imported: obj cannot be a tensor
    return torch is not None and isinstance(obj, torch.Tensor)


_local = threading.local()


def _tuple_ext(obj: tuple[Any, ...]) -> msgpack.ExtType:
    depth: int = getattr(_local, "tuple_depth", 0)
    if depth >= _MAX_TUPLE_DEPTH:
        raise _EncodeFailure(
            obj, f"tuples nested more than {_MAX_TUPLE_DEPTH} deep are not supported", ValueError
        )
    _local.tuple_depth = depth + 1
    try:
        return msgpack.ExtType(EXT_TUPLE, _packb(list(obj)))
    finally:
        _local.tuple_depth = depth


def _default(obj: Any) -> Any:
    """msgpack ``default`` hook: everything msgpack does not pack natively in strict mode."""
    cls = type(obj)
    if cls is tuple:
        return _tuple_ext(obj)
    if cls is np.ndarray:
        return _ndarray_ext(obj)
    if cls is EncodedImage or isinstance(obj, Image.Image):
        return _image_ext(obj)
    if isinstance(obj, int):  # int subclasses, and ints outside the 64-bit range
        value = int(obj)
        if not _INT_MIN <= value <= _INT_MAX:
            raise _EncodeFailure(
                obj,
                "ints must fit in 64 bits (-2**63 .. 2**64-1) to go over the wire; "
                "send a bigger number as a str",
            )
        return value
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, tuple):
        return _tuple_ext(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "biuf" and obj.dtype.name in _WIRE_DTYPES:
            return obj.item()
        raise _EncodeFailure(
            obj,
            f"numpy scalars of dtype {obj.dtype} are not supported; "
            "send a bool, int or float scalar, or a 0-d numpy array",
        )
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise _EncodeFailure(
                obj, "numpy masked arrays are not supported; send .data and .mask as two arrays"
            )
        return _ndarray_ext(np.asarray(obj))
    if _is_tensor(obj):
        return _tensor_ext(obj)
    raise _unsupported(obj)


def _packb(obj: Any) -> bytes:
    result: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)
    return result


def _render_key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _find_path(root: object, target: object, name: str) -> str:
    """Where ``target`` (by identity) sits inside ``root``, as ``name['a'][2]``."""
    if root is target:
        return name
    stack: list[tuple[object, str]] = [(root, name)]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            children = []
            for key, value in node.items():
                if key is target:
                    return f"a dict key of {path} ({_render_key(key)})"
                children.append((value, f"{path}[{_render_key(key)}]"))
        elif isinstance(node, (list, tuple)):
            children = [(value, f"{path}[{i}]") for i, value in enumerate(node)]
        else:
            continue
        for value, child_path in children:
            if value is target:
                return child_path
        stack.extend(reversed(children))
    return f"a value inside {name}"


def encode(obj: Any, *, max_bytes: int | None = None, name: str = "value") -> bytes:
    """Encode ``obj`` as one gridgen wire message (see the module docstring for the rules).

    Args:
        obj: the value.
        max_bytes: raise :class:`~gridgen.errors.PayloadTooLarge` when the encoding is
            longer than this.
        name: what to call ``obj`` in error messages (``"result"``, ``"payload"`` ...).

    Raises:
        TypeError: a value of an unsupported type, an unsupported dtype or an int out of
            the 64-bit range; the message names the type, the path inside ``obj`` and
            what to send instead.
        ValueError: nesting deeper than msgpack's 511 levels (or a container that contains
            itself), a ``str`` that is not valid Unicode, an image PIL cannot encode.
        PayloadTooLarge: the encoding is over ``max_bytes``.
    """
    try:
        data = _packb(obj)
    except _EncodeFailure as exc:
        where = _find_path(obj, exc.obj, name)
        raise exc.error(f"cannot encode {where}: {exc.reason}") from exc.__cause__
    except UnicodeEncodeError as exc:
        where = _find_path(obj, exc.object, name)
        raise ValueError(
            f"cannot encode {where}: str is not valid Unicode ({exc.reason})"
        ) from None
    except RecursionError:
        raise ValueError(f"cannot encode {name}: it is nested too deeply") from None
    except ValueError as exc:
        if "recursion limit" not in str(exc):
            raise
        raise ValueError(
            f"cannot encode {name}: nested deeper than 511 levels, or a container contains itself"
        ) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(
            f"encoded {name} is {len(data):,} bytes, over the limit of {max_bytes:,} bytes"
        )
    return data


# --------------------------------------------------------------------------- decode


def _read_header(payload: bytes) -> tuple[Any, int]:
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=_MAX_HEADER, use_list=True
    )
    unpacker.feed(payload[:_MAX_HEADER])
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        raise CodecError("extension header is truncated") from None
    offset: int = unpacker.tell()
    return header, offset


def _decode_buffer(
    payload: bytes, dtype_names: Collection[str]
) -> tuple[str, np.ndarray[Any, Any]]:
    header, offset = _read_header(payload)
    if type(header) is not list or len(header) != 2:
        raise CodecError("array ext: the header must be [dtype, shape]")
    name, shape = header
    if type(name) is not str or name not in dtype_names:
        raise CodecError(f"array ext: unsupported dtype {name!r}")
    if (
        type(shape) is not list
        or len(shape) > _MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise CodecError(f"array ext: bad shape {shape!r}")
    dtype = _BF16_CARRIER if name == "bfloat16" else _WIRE_DTYPES[name]
    expected = math.prod(shape) * dtype.itemsize
    got = len(payload) - offset
    if got != expected:
        raise CodecError(
            f"array ext: shape {tuple(shape)} of {name} needs {expected} bytes, payload has {got}"
        )
    if expected == 0:
        return name, np.zeros(tuple(shape), dtype=dtype.newbyteorder("="))
    flat = np.frombuffer(payload, dtype=dtype, offset=offset)
    if name == "bool" and flat.view(np.uint8).max() > 1:
        raise CodecError("array ext: bool buffer holds bytes other than 0 and 1")
    arr = flat.reshape(tuple(shape)).astype(dtype.newbyteorder("="), copy=True)
    return name, arr


def _decode_ndarray(payload: bytes) -> np.ndarray[Any, Any]:
    return _decode_buffer(payload, _WIRE_DTYPES)[1]


def _decode_tensor(payload: bytes) -> torch.Tensor:
    name, arr = _decode_buffer(payload, _TORCH_DTYPE_NAMES)
    torch = _torch()
    tensor = torch.from_numpy(arr)
    if name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor  # type: ignore[no-any-return]


def _ext_hook(depth: int, code: int, payload: bytes) -> Any:
    if code == EXT_TUPLE:
        if depth >= _MAX_TUPLE_DEPTH:
            raise CodecError(f"tuples are nested more than {_MAX_TUPLE_DEPTH} deep")
        items = _unpackb(payload, depth + 1)
        if type(items) is not list:
            raise CodecError("tuple ext: the payload must be a msgpack array")
        return tuple(items)
    if code == EXT_NDARRAY:
        return _decode_ndarray(payload)
    if code == EXT_TENSOR:
        return _decode_tensor(payload)
    if code == EXT_IMAGE:
        return _decode_image(payload)
    raise CodecError(f"unknown extension type code {code}")


_EXT_HOOKS: Final = [functools.partial(_ext_hook, depth) for depth in range(_MAX_TUPLE_DEPTH + 1)]


def _unpackb(data: bytes | memoryview, depth: int = 0) -> Any:
    return msgpack.unpackb(
        data,
        ext_hook=_EXT_HOOKS[depth],
        raw=False,
        use_list=True,
        strict_map_key=False,
        timestamp=0,
    )


_CONTAINERS: Final = frozenset((dict, list, tuple))


def _reject_timestamps(value: Any) -> None:
    """Refuse msgpack timestamps (ext -1), which msgpack decodes without calling ext_hook.

    Only containers are visited, and their items are classified by type in C
    (``set(map(type, items))``), so this costs little next to the unpacking itself.
    """
    if type(value) is msgpack.Timestamp:
        raise CodecError("unknown extension type code -1 (msgpack timestamp)")
    if type(value) not in _CONTAINERS:
        return
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        groups = (node.keys(), node.values()) if type(node) is dict else (node,)
        for items in groups:
            types = set(map(type, items))
            if msgpack.Timestamp in types:
                raise CodecError("unknown extension type code -1 (msgpack timestamp)")
            if not types.isdisjoint(_CONTAINERS):
                stack.extend(item for item in items if type(item) in _CONTAINERS)


def decode(data: bytes | memoryview, *, max_bytes: int | None = None) -> Any:
    """Decode one gridgen wire message.

    Raises:
        CodecError: the bytes are not a valid message (truncated or trailing data,
            invalid UTF-8, unknown extension code, bad dtype, shape/buffer mismatch,
            corrupt image, decompression bomb ...). Nothing else escapes for bad input.
        PayloadTooLarge: ``data`` is longer than ``max_bytes`` (checked before parsing).
    """
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise PayloadTooLarge(f"message is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    try:
        value = _unpackb(data)
        _reject_timestamps(value)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("message is nested too deeply") from None
    except Exception as exc:
        raise CodecError(f"not a valid gridgen message: {type(exc).__name__}: {exc}") from exc
    return value


# --------------------------------------------------------------------------- JSON


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if key is None:
        return "null"
    if isinstance(key, (bool, np.bool_)):
        return "true" if key else "false"
    if isinstance(key, (int, np.integer)):
        return str(int(key))
    if isinstance(key, (float, np.floating)):
        return json.dumps(float(key))  # as json.dumps writes float keys: "1.5", "NaN"
    return str(key)


def _array_to_jsonable(arr: np.ndarray[Any, Any]) -> Any:
    kind = arr.dtype.kind
    if kind == "c":
        arr = np.stack([arr.real, arr.imag], axis=-1)
        kind = "f"
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            obj = arr.astype(object)
            obj[~finite] = None
            return obj.tolist()
        return arr.tolist()
    if kind in "biu":
        return arr.tolist()
    raise _EncodeFailure(arr, f"numpy arrays of dtype {arr.dtype} have no JSON form")


def _jsonable(obj: Any) -> Any:
    cls = type(obj)
    if cls is str or cls is int or cls is bool or obj is None:
        return obj
    if cls is float:
        return obj if math.isfinite(obj) else None
    if cls is dict:
        return {_json_key(k): _jsonable(v) for k, v in obj.items()}
    if cls is list or cls is tuple:
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (Image.Image, EncodedImage)):
        try:
            return image_data_url(obj)
        except Exception as exc:
            raise _EncodeFailure(
                obj, f"this PIL image cannot be encoded: {exc}", ValueError
            ) from exc
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, np.ndarray):
        return _array_to_jsonable(np.asarray(obj))
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "biufc":
            return _array_to_jsonable(np.asarray(obj))
        raise _unsupported(obj)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _jsonable(float(obj))
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, dict):
        return {_json_key(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if _is_tensor(obj):
        if str(obj.dtype) == "torch.bfloat16":
            return _array_to_jsonable(obj.detach().cpu().float().numpy())
        return _array_to_jsonable(_tensor_to_numpy(obj)[1])
    raise _unsupported(obj)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as JSON-native data (see "JSON" in the module docstring).

    Raises ``TypeError`` naming the type and its path for values with no JSON form.
    """
    try:
        return _jsonable(obj)
    except _EncodeFailure as exc:
        where = _find_path(obj, exc.obj, "value")
        raise exc.error(f"cannot convert {where} to JSON: {exc.reason}") from exc.__cause__
    except RecursionError:
        raise ValueError("cannot convert value to JSON: it is nested too deeply") from None


def text_event(obj: Any) -> bytes:
    """One server-sent event: ``b"data: " + compact JSON of to_jsonable(obj) + b"\\n\\n"``."""
    text = json.dumps(to_jsonable(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # "replace" only matters for lone surrogates, which UTF-8 cannot carry.
    return b"data: " + text.encode("utf-8", "replace") + b"\n\n"
