"""Numeric buffers on the wire: numpy arrays (ext 2), torch tensors (ext 3), numpy scalars (ext 5).

The layout (a msgpack header ``[dtype, shape]`` then the raw little-endian elements)
and the dtype whitelist are specified in :mod:`gridgen._codec`. torch is imported only
when a tensor is encoded or decoded.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Final

import msgpack
import numpy as np

from ._encode_errors import EncodeFailure
from .errors import CodecError

if TYPE_CHECKING:
    import torch

EXT_NDARRAY: Final = 2
EXT_TENSOR: Final = 3
EXT_SCALAR: Final = 5
_MAX_HEADER: Final = 1024
_MAX_NDIM: Final = 64

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


def _header_and_buffer(header: list[Any], buffer: np.ndarray[Any, Any]) -> bytes:
    return b"".join((msgpack.packb(header, use_bin_type=True), buffer.data))


def _ndarray_ext(arr: np.ndarray[Any, Any]) -> msgpack.ExtType:
    name = arr.dtype.name
    wire = _WIRE_DTYPES.get(name)
    if wire is None or arr.dtype.fields is not None:
        raise EncodeFailure(
            arr,
            f"numpy arrays of dtype {arr.dtype} are not supported; "
            f"use one of {', '.join(_NUMERIC_DTYPE_NAMES)}",
        )
    if arr.dtype != wire:  # big-endian: normalised to little-endian
        arr = arr.astype(wire)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return msgpack.ExtType(EXT_NDARRAY, _header_and_buffer([name, list(arr.shape)], arr))


def _scalar_ext(obj: np.generic[Any]) -> msgpack.ExtType:
    """A numpy scalar as ext 5: the layout of a 0-d array, so it decodes with its own type."""
    name = obj.dtype.name
    wire = _WIRE_DTYPES.get(name)
    if wire is None:
        raise EncodeFailure(
            obj,
            f"numpy scalars of dtype {obj.dtype} are not supported; "
            f"use one of {', '.join(_NUMERIC_DTYPE_NAMES)}",
        )
    return msgpack.ExtType(EXT_SCALAR, _header_and_buffer([name, []], np.asarray(obj, dtype=wire)))


def _is_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")  # not imported: obj cannot be a tensor
    return torch is not None and isinstance(obj, torch.Tensor)


def _torch() -> Any:
    import torch

    return torch


def _tensor_to_numpy(tensor: torch.Tensor) -> tuple[str, np.ndarray[Any, Any]]:
    """(wire dtype name, contiguous CPU numpy array holding the tensor's bytes)."""
    torch = _torch()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPE_NAMES:
        raise EncodeFailure(
            tensor,
            f"torch tensors of dtype {tensor.dtype} are not supported; "
            f"use one of {', '.join(sorted(_TORCH_DTYPE_NAMES))}",
        )
    if tensor.layout != torch.strided:
        raise EncodeFailure(
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
    except EncodeFailure:
        raise
    except Exception as exc:
        raise EncodeFailure(
            tensor, f"this tensor cannot be copied to the CPU: {exc}", ValueError
        ) from exc
    return msgpack.ExtType(EXT_TENSOR, _header_and_buffer([name, list(tensor.shape)], arr))


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


def _decode_scalar(payload: bytes) -> np.generic[Any]:
    arr = _decode_buffer(payload, _WIRE_DTYPES)[1]
    if arr.shape != ():
        raise CodecError(f"numpy scalar ext: the shape must be [], not {list(arr.shape)}")
    scalar: np.generic[Any] = arr.reshape(1)[0]  # indexing one element gives the numpy scalar
    return scalar


def _decode_tensor(payload: bytes) -> torch.Tensor:
    name, arr = _decode_buffer(payload, _TORCH_DTYPE_NAMES)
    torch = _torch()
    tensor = torch.from_numpy(arr)
    if name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor  # type: ignore[no-any-return]
