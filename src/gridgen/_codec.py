"""The gridgen wire codec: msgpack plus five extension types.

Everything the host and the workers send each other over ZeroMQ (requests, results,
stream items, errors) is one msgpack document encoded by :func:`encode` and read back
by :func:`decode`. Nothing on any socket is ever unpickled, evaluated or imported from:
the decoder builds only the plain values and the five extension types described here,
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
numpy scalars (``np.float32(1.0)``,    ext 5 (below); decoded as the same numpy scalar type
``np.int64(3)``, ``np.bool_``)
=====================================  ======================================================

Subclasses of ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float`` and ``bytes``
(``OrderedDict``, named tuples, ``IntEnum`` members, ``np.str_`` ...) are sent as their
base type and come back as the base type. Paths, datetimes, UUIDs, enums, sets,
dataclasses and pydantic models and URLs are sent as their plain (JSON) form and arrive
as it (the table is in :mod:`gridgen._values`). Anything else raises ``TypeError``
naming the type and where it sits inside the value, for example
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

``ext 5: numpy scalar``
    payload: the layout of ext 2 with shape ``[]``. Decoded as a numpy scalar of that
    dtype, so ``np.float32(0.5)`` comes back as ``np.float32(0.5)``.

Dtype names (ext 2, 3 and 5), a whitelist of numeric types only: ``bool``, ``int8``,
``int16``, ``int32``, ``int64``, ``uint8``, ``uint16``, ``uint32``, ``uint64``,
``float16``, ``float32``, ``float64``, ``complex64``, ``complex128``, and ``bfloat16``
for tensors only. Object, string, structured, datetime and other dtypes are a
``TypeError`` on encode and a ``CodecError`` on decode. Big-endian numpy arrays are
*normalised*: they are converted to little-endian on encode and decode as native
(little-endian) arrays with equal values. Non-contiguous arrays and tensors are made
contiguous on encode. Bool buffers must hold only the bytes 0 and 1.

Codes 1..5 are the only extension codes; any other code, including msgpack's own
timestamp (-1), is a ``CodecError``.

Images
------

A PIL image is sent as ext 4 (its original bytes when it came off the wire untouched, else
JPEG/WebP when opened from such a file, else PNG); the rules, and :class:`EncodedImage` for
bytes a worker already has, are in :mod:`gridgen.images`, which owns every image format.
JSON for server-sent events is :mod:`gridgen._json`.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Final

import msgpack
import numpy as np
from PIL import Image

from ._arrays import (
    EXT_NDARRAY,
    EXT_SCALAR,
    EXT_TENSOR,
    _decode_ndarray,
    _decode_scalar,
    _decode_tensor,
    _is_tensor,
    _ndarray_ext,
    _read_header,
    _scalar_ext,
    _tensor_ext,
)
from ._encode_errors import EncodeFailure, find_path, unsupported
from ._values import NOT_PLAIN, plain_form
from .errors import CodecError, PayloadTooLarge
from .images import (
    FORMATS,
    STASH_ATTR,
    EncodedImage,
    ImageFormat,
    _check_framing,
    _open_image,
    _preferred_encoding,
    encode_image,
    get_encoded_image,
    image_data_url,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "EXT_IMAGE",
    "EXT_NDARRAY",
    "EXT_SCALAR",
    "EXT_TENSOR",
    "EXT_TUPLE",
    "EncodedImage",
    "ImageFormat",
    "decode",
    "encode",
    "encode_image",
    "get_encoded_image",
    "image_data_url",
]
# EncodedImage, encode_image, get_encoded_image and image_data_url live in gridgen.images;
# they are re-exported here for older imports.

EXT_TUPLE: Final = 1
EXT_IMAGE: Final = 4

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Each tuple level is a nested msgpack pack/unpack with its own C context (about 40 KiB
# of C stack when unpacking), so tuple-in-tuple nesting is bounded well below what a
# thread's stack holds. Lists and dicts are bounded by msgpack itself.
_MAX_TUPLE_DEPTH: Final = 32

def _decode_image(payload: bytes) -> Image.Image:
    header, offset = _read_header(payload)
    if type(header) is not str or header not in FORMATS:
        raise CodecError(f"image ext: unknown image format {header!r}")
    try:
        encoded = EncodedImage(payload[offset:], header)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CodecError(f"image ext: {exc}") from exc
    _check_framing(encoded)
    image = _open_image(encoded)
    setattr(image, STASH_ATTR, (encoded, image.size, image.mode))
    return image


# --------------------------------------------------------------------------- encode


def _image_ext(image: Image.Image | EncodedImage) -> msgpack.ExtType:
    if isinstance(image, EncodedImage):
        encoded = image
    else:
        try:
            encoded = _preferred_encoding(image)
        except Exception as exc:
            raise EncodeFailure(
                image, f"this PIL image cannot be encoded: {exc}", ValueError
            ) from exc
    header = msgpack.packb(encoded.format, use_bin_type=True)
    return msgpack.ExtType(EXT_IMAGE, header + encoded.data)


_local = threading.local()


def _tuple_ext(obj: tuple[Any, ...]) -> msgpack.ExtType:
    depth: int = getattr(_local, "tuple_depth", 0)
    if depth >= _MAX_TUPLE_DEPTH:
        raise EncodeFailure(
            obj, f"tuples nested more than {_MAX_TUPLE_DEPTH} deep are not supported", ValueError
        )
    _local.tuple_depth = depth + 1
    try:
        return msgpack.ExtType(EXT_TUPLE, _packb(list(obj)))
    finally:
        _local.tuple_depth = depth


_NATIVE: Final = frozenset((dict, list, str, int, float, bool, bytes, type(None)))


def _default(obj: Any) -> Any:
    """msgpack ``default`` hook: everything msgpack does not pack natively in strict mode."""
    cls = type(obj)
    if cls is tuple:
        return _tuple_ext(obj)
    if cls is np.ndarray:
        return _ndarray_ext(obj)
    if cls is EncodedImage or isinstance(obj, Image.Image):
        return _image_ext(obj)
    if isinstance(obj, np.generic):  # before int and float: np.float64 is a float
        return _scalar_ext(obj)
    if isinstance(obj, int):  # int subclasses, and ints outside the 64-bit range
        value = int(obj)
        if not _INT_MIN <= value <= _INT_MAX:
            raise EncodeFailure(
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
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise EncodeFailure(
                obj, "numpy masked arrays are not supported; send .data and .mask as two arrays"
            )
        return _ndarray_ext(np.asarray(obj))
    if _is_tensor(obj):
        return _tensor_ext(obj)
    form = plain_form(obj)  # paths, datetimes, enums, sets, dataclasses ... (gridgen._values)
    if form is NOT_PLAIN:
        raise unsupported(obj)
    # msgpack calls this hook once per value: what it returns must pack as it is.
    return form if type(form) in _NATIVE else _default(form)


def _packb(obj: Any) -> bytes:
    result: bytes = msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)
    return result


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
    except EncodeFailure as exc:
        where = find_path(obj, exc.obj, name)
        raise exc.error(f"cannot encode {where}: {exc.reason}") from exc.__cause__
    except UnicodeEncodeError as exc:
        where = find_path(obj, exc.object, name)
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
    if code == EXT_SCALAR:
        return _decode_scalar(payload)
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

