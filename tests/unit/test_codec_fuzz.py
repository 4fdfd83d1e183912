"""Property tests of the wire codec: every supported value round-trips; garbage is only ever a CodecError."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import hypothesis.extra.numpy as hnp
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gridgen._codec import EXT_IMAGE, EXT_NDARRAY, EXT_TENSOR, EXT_TUPLE, decode, encode
from gridgen.errors import CodecError

from helpers.fuzz import DTYPES, mutate

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
keys = st.one_of(
    st.text(max_size=10),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
    st.tuples(st.integers(-5, 5), st.text(max_size=3)),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)
arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        dtype=np.dtype(dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
        elements={"allow_nan": False} if np.dtype(dtype).kind in "fc" else None,
    )
)


def same(a: Any, b: Any) -> bool:
    """Exact equality, types included (so a tuple is not a list, True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@FUZZ
@given(values)
def test_plain_values_round_trip(value: Any) -> None:
    assert same(decode(encode(value)), value)


@FUZZ
@given(arrays)
def test_numpy_arrays_round_trip(arr: np.ndarray[Any, Any]) -> None:
    out = decode(encode({"a": arr, "t": (arr,)}))
    assert same(out["a"], arr)
    assert same(out["t"][0], arr)
    assert out["a"].flags.writeable


@settings(max_examples=60, deadline=None)
@given(arrays)
def test_torch_tensors_round_trip(arr: np.ndarray[Any, Any]) -> None:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(arr.copy())
    out = decode(encode(t))
    assert out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(out, t)
    bf = t.to(torch.bfloat16) if t.dtype.is_floating_point else None
    if bf is not None:
        back = decode(encode(bf))
        assert torch.equal(back.view(torch.int16), bf.view(torch.int16))


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


def _ext(code: int, payload: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, payload))


_small_png = encode(Image.new("RGB", (3, 2), (10, 20, 30)))
# Encodings of every kind, to be mutated.
SEEDS: list[bytes] = [
    encode({"a": [1, 2.5, "x", b"y", None, True], "t": (1, (2,)), 3: {"k": [()]}}),
    encode(np.arange(12, dtype=np.float32).reshape(3, 4)),
    encode(np.array([True, False])),
    encode((np.zeros((2, 0)), np.array(7, dtype=np.int64))),
    _small_png,
    _ext(EXT_TENSOR, msgpack.packb(["bfloat16", [2]]) + b"\x80\x3f\x00\x40"),
    _ext(EXT_NDARRAY, msgpack.packb(["uint8", [3]]) + b"abc"),
    _ext(EXT_TUPLE, msgpack.packb([1, 2])),
    _ext(EXT_IMAGE, msgpack.packb("webp") + b"RIFF\x04\x00\x00\x00WEBP"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    return mutate(draw, draw(st.sampled_from(SEEDS)), min_edits=1, max_insert=4)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_mutated_encodings_only_raise_codec_error(data: bytes) -> None:
    try:
        value = decode(data)
    except CodecError:
        return
    # Whatever decodes must be made of supported types only, and encode again.
    encode(value)


@FUZZ
@given(
    st.lists(st.sampled_from([0x90, 0x91, 0x81, 0xC0, 0xD6, 0xFF, 0xC7, 0x0C, 0x01]), max_size=40)
)
def test_structural_bytes_only_raise_codec_error(codes: list[int]) -> None:
    with contextlib.suppress(CodecError):
        decode(bytes(codes))
