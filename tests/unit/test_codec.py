"""The wire codec: round trips of every supported type, errors with paths, malformed input, JSON."""

from __future__ import annotations

import base64
import collections
import enum
import io
import json
import os
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from gridgen._codec import (
    EXT_IMAGE,
    EXT_NDARRAY,
    EXT_TENSOR,
    EXT_TUPLE,
    EncodedImage,
    decode,
    encode,
    encode_image,
    get_encoded_image,
    image_data_url,
)
from gridgen._json import text_event, to_jsonable
from gridgen.errors import CodecError, PayloadTooLarge

from helpers.fuzz import DTYPES


def rt(value: Any) -> Any:
    return decode(encode(value))


def ext(code: int, payload: bytes) -> bytes:
    """A msgpack ext of any code (-128..127), built by hand (ExtType refuses negative codes)."""
    if 0 <= code <= 127:
        return msgpack.packb(msgpack.ExtType(code, payload))
    return (
        b"\xc9" + len(payload).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + payload
    )


def header(value: Any) -> bytes:
    return msgpack.packb(value)


def gradient(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgba = np.stack([xx * 5 % 256, yy * 7 % 256, (xx + yy) % 256, 255 - xx % 256], -1)
    base = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    return base if mode == "RGBA" else base.convert(mode)


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- plain values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        float("inf"),
        "",
        "héllo ✓ 猫",
        b"",
        b"\x00\xff" * 100,
        [],
        {},
        (),
        [1, [2, [3, []]]],
        {"a": {"b": {"c": [1, 2, {"d": None}]}}},
        (1, (2, (3,)), [4, (5,)]),
        {1: "int key", b"k": "bytes key", None: "none key", (1, "t"): "tuple key", 2.5: "f"},
        {"mixed": [None, True, 1, 1.0, "s", b"b", (1,), {"x": [()]}]},
    ],
)
def test_plain_values_round_trip(value: Any) -> None:
    out = rt(value)
    assert out == value
    assert type(out) is type(value)


def test_nested_types_are_exact() -> None:
    value = {"t": (1, [2, (3, {"k": (4,)})]), "l": [(), []]}
    out = rt(value)
    assert out == value
    assert type(out["t"]) is tuple
    assert type(out["t"][1]) is list
    assert type(out["t"][1][1]) is tuple
    assert type(out["t"][1][1][1]["k"]) is tuple
    assert [type(x) for x in out["l"]] == [tuple, list]


def test_nan_round_trips() -> None:
    out = rt([float("nan")])
    assert len(out) == 1 and out[0] != out[0]


def test_bytes_like_come_back_as_bytes() -> None:
    assert rt(bytearray(b"abc")) == b"abc"
    assert type(rt(bytearray(b"abc"))) is bytes
    assert rt(memoryview(b"xyz")) == b"xyz"
    assert type(rt(memoryview(b"xyz"))) is bytes


def test_subclasses_are_sent_as_their_base_type() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    point = collections.namedtuple("point", "x y")
    value = {
        "od": collections.OrderedDict(a=1),
        "dd": collections.defaultdict(list, b=[2]),
        "enum": Color.RED,
        "str": Name("n"),
        "nt": point(1, 2),
    }
    out = rt(value)
    assert out == {"od": {"a": 1}, "dd": {"b": [2]}, "enum": 1, "str": "n", "nt": (1, 2)}
    assert type(out["od"]) is dict
    assert type(out["enum"]) is int
    assert type(out["str"]) is str
    assert type(out["nt"]) is tuple


def test_numpy_scalars_keep_their_type() -> None:
    values = [np.float32(1.5), np.int64(-3), np.uint8(7), np.bool_(True), np.float16(0.5), np.complex64(1j)]
    out = rt(values)
    assert out == values
    assert [type(x) for x in out] == [type(v) for v in values]


def test_numpy_scalar_wire_layout() -> None:
    # ext 5: the header and buffer of a 0-d array
    assert encode(np.int16(2)) == ext(5, header(["int16", []]) + b"\x02\x00")


# --------------------------------------------------------------------------- numpy arrays



@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_round_trip_every_dtype(dtype: str) -> None:
    arr = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    out = rt(arr)
    assert type(out) is np.ndarray
    assert out.dtype == arr.dtype
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable and out.flags.c_contiguous
    out[...] = 0  # a fresh, writeable copy


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 5, 0), (1,), (1, 1, 1, 1)])
def test_numpy_zero_d_and_empty(shape: tuple[int, ...]) -> None:
    arr = np.full(shape, 3.25, dtype=np.float32)
    out = rt(arr)
    assert out.shape == shape
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


def test_numpy_non_contiguous() -> None:
    base = np.arange(60, dtype=np.int32).reshape(6, 10)
    for view in (base[::2, 1::3], base.T, base[:, ::-1], np.broadcast_to(base[:1], (4, 10))):
        out = rt(view)
        np.testing.assert_array_equal(out, view)
        assert out.flags.c_contiguous


def test_numpy_big_endian_is_normalised_to_little_endian() -> None:
    arr = np.arange(10, dtype=">f8") * 1.5
    out = rt(arr)
    assert out.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out, arr)
    raw = encode(np.array([1], dtype=">u4"))
    assert raw.endswith(b"\x01\x00\x00\x00")  # little-endian on the wire


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_numpy_matrix_subclass_comes_back_as_ndarray() -> None:
    out = rt(np.asmatrix([[1, 2], [3, 4]]))
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "arr",
    [
        np.array(["a", "b"]),
        np.array([b"a"]),
        np.array([object()], dtype=object),
        np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=np.longdouble)
        if np.dtype(np.longdouble).itemsize > 8
        else np.array(["x"]),
    ],
)
def test_numpy_non_numeric_dtypes_are_rejected(arr: np.ndarray[Any, Any]) -> None:
    with pytest.raises(TypeError, match=r"cannot encode value\['a'\]: numpy arrays of dtype"):
        encode({"a": arr})


def test_masked_array_rejected() -> None:
    with pytest.raises(TypeError, match="masked arrays"):
        encode(np.ma.masked_array([1, 2], mask=[0, 1]))


def test_numpy_array_wire_layout() -> None:
    data = encode(np.array([[1, 2]], dtype=np.int16))
    assert data == ext(EXT_NDARRAY, header(["int16", [1, 2]]) + b"\x01\x00\x02\x00")


# --------------------------------------------------------------------------- torch tensors

TORCH_DTYPES = [
    torch.bool,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_round_trip_every_dtype(dtype: torch.dtype) -> None:
    t = (torch.arange(12) % 5).to(torch.int64).reshape(3, 4).to(dtype)
    out = rt(t)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == dtype
    assert out.shape == t.shape
    assert out.device.type == "cpu"
    assert torch.equal(out, t)


def test_bfloat16_keeps_exact_bits() -> None:
    t = torch.tensor([1.0, -2.5, 3.140625, 1e-38, float("inf"), 65504.0], dtype=torch.bfloat16)
    out = rt(t)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.view(torch.int16), t.view(torch.int16))
    data = encode(torch.tensor([1.0], dtype=torch.bfloat16))
    assert data == ext(EXT_TENSOR, header(["bfloat16", [1]]) + b"\x80\x3f")


@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3)])
def test_torch_zero_d_and_empty(shape: tuple[int, ...]) -> None:
    t = torch.full(shape, 2.0, dtype=torch.float16)
    out = rt(t)
    assert out.shape == t.shape
    assert torch.equal(out, t)


def test_torch_non_contiguous_grad_conj() -> None:
    base = torch.arange(20.0, requires_grad=True).reshape(4, 5)
    view = base.t()[1:, ::2]
    out = rt(view)
    assert torch.equal(out, view.detach())
    assert not out.requires_grad
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64).conj()
    assert torch.equal(rt(z), z.resolve_conj())
    n = torch.tensor([1.0, 2.0])._neg_view()
    assert torch.equal(rt(n), torch.tensor([-1.0, -2.0]))


@pytest.mark.filterwarnings("ignore:.*quantized:UserWarning")
def test_torch_unsupported_dtype_and_layout() -> None:
    with pytest.raises(TypeError, match=r"cannot encode value\['q'\]: torch tensors of dtype"):
        encode({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)})
    with pytest.raises(TypeError, match="layout"):
        encode([torch.ones(2, 2).to_sparse()])


def test_torch_parameter_comes_back_as_tensor() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    out = rt(p)
    assert type(out) is torch.Tensor
    assert torch.equal(out, torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensor_moves_to_cpu() -> None:
    t = torch.arange(4.0, device="cuda")
    out = rt(t)
    assert out.device.type == "cpu"
    assert torch.equal(out, t.cpu())


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "1", "P", "I;16"])
def test_pil_image_round_trips_pixel_exact_as_png(mode: str) -> None:
    image = gradient(mode)
    out = rt({"image": image})["image"]
    assert isinstance(out, Image.Image)
    assert out.format == "PNG"
    assert out.mode == mode
    assert out.size == image.size
    np.testing.assert_array_equal(pixels(out), pixels(image))


def test_png_is_the_default_and_fast_level() -> None:
    data = encode(gradient())
    payload_start = data.index(b"\x89PNG")
    assert data[payload_start - 4 : payload_start] == b"\xa3png"


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "F", "HSV"])
def test_modes_png_cannot_store_are_converted(mode: str) -> None:
    image = gradient("RGB").convert(mode)
    out = rt(image)
    assert out.mode in ("RGB", "RGBA")
    assert out.size == image.size


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp_lossless_is_pixel_exact(mode: str) -> None:
    image = gradient(mode)
    encoded = encode_image(image, "webp")
    assert encoded.format == "webp"
    out = rt(encoded)
    assert out.format == "WEBP"
    assert out.mode == mode
    np.testing.assert_array_equal(pixels(out), pixels(image))


def test_webp_lossy_and_jpeg_keep_size_and_mode() -> None:
    image = gradient("RGB")
    for fmt, quality in [("webp", 80), ("jpeg", 90), ("jpg", None)]:
        encoded = encode_image(image, fmt, quality)
        out = rt(encoded)
        assert out.size == image.size
        assert out.mode == "RGB"
        diff = np.abs(pixels(out).astype(int) - pixels(image).astype(int)).mean()
        assert diff < 8
    gray = rt(encode_image(gradient("L"), "jpeg"))
    assert gray.mode == "L" and gray.format == "JPEG"


def test_jpeg_of_rgba_drops_alpha() -> None:
    out = rt(encode_image(gradient("RGBA"), "jpeg"))
    assert out.mode == "RGB"


def test_encode_image_argument_checks() -> None:
    with pytest.raises(ValueError, match="format"):
        encode_image(gradient(), "gif")
    with pytest.raises(ValueError, match="quality"):
        encode_image(gradient(), "jpeg", 0)
    with pytest.raises(TypeError, match="PIL image"):
        encode_image(np.zeros((2, 2)), "png")  # type: ignore[arg-type]


def test_encoded_image_validation() -> None:
    png = png_bytes(gradient())
    assert EncodedImage(bytearray(png), "png").data == png  # type: ignore[arg-type]
    assert EncodedImage(png, "PNG").format == "png"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signature"):
        EncodedImage(png, "jpeg")
    with pytest.raises(ValueError, match="format"):
        EncodedImage(png, "gif")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EncodedImage("text", "png")  # type: ignore[arg-type]
    assert EncodedImage(png, "png").mime_type == "image/png"
    assert "bytes" in repr(EncodedImage(png, "png"))


def test_encoded_image_passes_through_without_re_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded = encode_image(gradient("RGB"), "jpeg", 70)

    def no_save(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an image was re-encoded")

    monkeypatch.setattr(Image.Image, "save", no_save)
    wire = encode({"image": encoded})
    assert encoded.data in wire
    out = decode(wire)["image"]
    assert isinstance(out, Image.Image)
    assert out.format == "JPEG"
    # The decoded image carries its bytes: forwarding it or making a data URL reuses them.
    assert get_encoded_image(out) == encoded
    assert encoded.data in encode(out)
    assert image_data_url(out) == image_data_url(encoded)
    assert to_jsonable({"i": out})["i"].startswith("data:image/jpeg;base64,")
    assert decode(encode(decode(encode(out)))).size == out.size


def test_stashed_bytes_are_dropped_once_pixels_may_have_changed() -> None:
    encoded = encode_image(gradient("RGB"), "png")
    out = decode(encode(encoded))
    assert get_encoded_image(out) is not None
    assert get_encoded_image(out.copy()) is None
    assert get_encoded_image(out.convert("L")) is None
    out.putpixel((0, 0), (1, 2, 3))  # loads, then edits in place
    assert get_encoded_image(out) is None
    again = rt(out)
    assert again.getpixel((0, 0)) == (1, 2, 3)
    assert get_encoded_image(gradient()) is None


def test_decoded_jpeg_is_re_encoded_as_jpeg_after_load() -> None:
    out = rt(encode_image(gradient("RGB"), "jpeg"))
    out.load()
    assert get_encoded_image(out) is None
    assert rt(out).format == "JPEG"
    assert image_data_url(out).startswith("data:image/jpeg;base64,")


def test_image_data_url_decodes_to_the_same_pixels() -> None:
    image = gradient("RGBA")
    url = image_data_url(image)
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    back = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    np.testing.assert_array_equal(pixels(back), pixels(image))
    with pytest.raises(TypeError):
        image_data_url(b"not an image")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- encode errors


def test_type_error_names_type_path_and_advice() -> None:
    class Custom:
        pass

    result = {"images": [1, 2, Custom()]}
    with pytest.raises(TypeError) as info:
        encode(result, name="result")
    message = str(info.value)
    assert "result['images'][2]" in message
    assert "Custom" in message
    assert (
        "dicts, lists, tuples, str, int, float, bool, None, bytes, PIL images, "
        "numpy arrays or torch tensors"
    ) in message


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({1j}, "an item of value"),  # a set travels as a list of its items
        ({"a": (1, {"b": [object()]})}, "value['a'][1]['b'][0]"),
        ([[], [1, 2.0, 1j]], "value[1][2]"),
        ({"n": 2**64}, "value['n']"),
        ({"n": -(2**63) - 1}, "value['n']"),
        ({"d": np.datetime64("2020-01-01")}, "value['d']"),
        ({"f": lambda: 1}, "value['f']"),
    ],
)
def test_type_error_paths(value: Any, path: str) -> None:
    with pytest.raises(TypeError, match=f"cannot encode {re.escape(path)}:"):
        encode(value)


def test_big_int_error_names_the_rule() -> None:
    with pytest.raises(TypeError, match="64 bits"):
        encode([10**30])


def test_bad_dict_key_is_reported() -> None:
    key = object()
    with pytest.raises(TypeError, match=r"a dict key of value\['a'\]"):
        encode({"a": {key: 1}})


def test_too_deep_or_self_containing_is_a_value_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        encode(loop)
    deep: Any = ()
    for _ in range(5000):
        deep = (deep,)
    with pytest.raises(ValueError, match="nested"):
        encode(deep)


def test_lone_surrogate_is_a_value_error_with_path() -> None:
    with pytest.raises(ValueError, match=r"value\['s'\]: str is not valid Unicode"):
        encode({"s": "a\ud800"})


def test_payload_too_large() -> None:
    blob = b"x" * 1000
    assert decode(encode(blob, max_bytes=1003)) == blob
    with pytest.raises(PayloadTooLarge) as info:
        encode(blob, max_bytes=1002, name="result")
    assert "1,003 bytes" in str(info.value) and "1,002" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(PayloadTooLarge):
        decode(encode(blob), max_bytes=1002)


# --------------------------------------------------------------------------- malformed input

VALID_PNG = png_bytes(gradient())


def _png_with_chunk_crc_broken() -> bytes:
    data = bytearray(VALID_PNG)
    data[-20] ^= 0xFF  # inside the last IDAT chunk
    return bytes(data)


def _webp() -> bytes:
    return encode_image(gradient(), "webp").data


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "truncated str": b"\xa5ab",
    "truncated array": b"\x93\x01\x02",
    "trailing data": b"\x01\x02",
    "reserved byte": b"\xc1",
    "invalid utf-8": b"\xa2\xff\xfe",
    "unhashable key": b"\x81\x90\x01",
    "too deep": b"\x91" * 5000,
    "timestamp ext": msgpack.packb(msgpack.Timestamp(0)),
    "timestamp ext nested": msgpack.packb({"a": [1, msgpack.Timestamp(5)]}),
    "timestamp in tuple": ext(EXT_TUPLE, msgpack.packb([msgpack.Timestamp(1)])),
    "unknown ext 6": ext(6, b"abc"),
    "scalar ext with a shape": ext(5, header(["int8", [1]]) + b"\x01"),
    "scalar ext truncated": ext(5, header(["int32", []]) + b"\x01"),
    "unknown ext -2": ext(-2, b""),
    "unknown ext 127": ext(127, b"\x00"),
    "tuple not array": ext(EXT_TUPLE, msgpack.packb({"a": 1})),
    "tuple truncated": ext(EXT_TUPLE, b"\x92\x01"),
    "tuple empty payload": ext(EXT_TUPLE, b""),
    "array empty payload": ext(EXT_NDARRAY, b""),
    "array header truncated": ext(EXT_NDARRAY, b"\x92\xa5int"),
    "array header not list": ext(EXT_NDARRAY, header("float32")),
    "array header wrong arity": ext(EXT_NDARRAY, header(["float32", [1], 0])),
    "array dtype object": ext(EXT_NDARRAY, header(["object", [1]]) + b"\x00" * 8),
    "array dtype O": ext(EXT_NDARRAY, header(["O", [1]]) + b"\x00" * 8),
    "array dtype <f4": ext(EXT_NDARRAY, header(["<f4", [1]]) + b"\x00" * 4),
    "array dtype float128": ext(EXT_NDARRAY, header(["float128", [1]]) + b"\x00" * 16),
    "array dtype bfloat16 (torch only)": ext(EXT_NDARRAY, header(["bfloat16", [1]]) + b"\0\0"),
    "array dtype not str": ext(EXT_NDARRAY, header([5, [1]]) + b"\x00"),
    "array shape negative": ext(EXT_NDARRAY, header(["uint8", [-1]])),
    "array shape float": ext(EXT_NDARRAY, header(["uint8", [1.0]]) + b"\x00"),
    "array shape bool": ext(EXT_NDARRAY, header(["uint8", [True]]) + b"\x00"),
    "array shape not list": ext(EXT_NDARRAY, header(["uint8", 1]) + b"\x00"),
    "array too many dims": ext(EXT_NDARRAY, header(["uint8", [1] * 65]) + b"\x00"),
    "array buffer short": ext(EXT_NDARRAY, header(["float32", [4]]) + b"\x00" * 15),
    "array buffer long": ext(EXT_NDARRAY, header(["float32", [4]]) + b"\x00" * 17),
    "array huge shape": ext(EXT_NDARRAY, header(["float64", [2**62, 2**62]]) + b"\x00" * 8),
    "array zero with huge dim": ext(EXT_NDARRAY, header(["float64", [0, 2**63]])),
    "array bool not 0/1": ext(EXT_NDARRAY, header(["bool", [2]]) + b"\x01\x02"),
    "tensor dtype unknown": ext(EXT_TENSOR, header(["qint8", [1]]) + b"\x00"),
    "tensor buffer short": ext(EXT_TENSOR, header(["bfloat16", [2]]) + b"\x00\x00"),
    "tensor bool not 0/1": ext(EXT_TENSOR, header(["bool", [1]]) + b"\x07"),
    "image empty": ext(EXT_IMAGE, b""),
    "image format unknown": ext(EXT_IMAGE, header("gif") + b"GIF89a"),
    "image format not str": ext(EXT_IMAGE, header(1) + VALID_PNG),
    "image format uppercase": ext(EXT_IMAGE, header("PNG") + VALID_PNG),
    "image signature mismatch": ext(EXT_IMAGE, header("jpeg") + VALID_PNG),
    "image no bytes": ext(EXT_IMAGE, header("png")),
    "png truncated": ext(EXT_IMAGE, header("png") + VALID_PNG[:-30]),
    "png only signature": ext(EXT_IMAGE, header("png") + VALID_PNG[:8]),
    "png crc broken": ext(EXT_IMAGE, header("png") + _png_with_chunk_crc_broken()),
    "png trailing bytes": ext(EXT_IMAGE, header("png") + VALID_PNG + b"junk"),
    "png bad IHDR": ext(
        EXT_IMAGE,
        header("png")
        + b"\x89PNG\r\n\x1a\n"
        + (13).to_bytes(4, "big")
        + b"IHDR"
        + b"\x00" * 13
        + zlib.crc32(b"IHDR" + b"\x00" * 13).to_bytes(4, "big")
        + b"\x00\x00\x00\x00IEND\xaeB`\x82",
    ),
    "jpeg garbage": ext(EXT_IMAGE, header("jpeg") + b"\xff\xd8\xff" + b"\x00" * 50),
    "webp riff size wrong": ext(EXT_IMAGE, header("webp") + _webp()[:-4]),
    "webp garbage": ext(EXT_IMAGE, header("webp") + b"RIFF\x04\x00\x00\x00WEBP"),
    "pickle": pickle.dumps({"a": 1}),
    "json": b'{"a": 1}',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_input_raises_codec_error(name: str) -> None:
    with pytest.raises(CodecError):
        decode(MALFORMED[name])
    with pytest.raises(CodecError):
        decode(memoryview(MALFORMED[name]))


def test_deeply_nested_tuple_exts_are_a_codec_error() -> None:
    payload = msgpack.packb([])
    for _ in range(3000):
        payload = msgpack.packb(msgpack.ExtType(EXT_TUPLE, payload))
    with pytest.raises(CodecError, match="nested"):
        decode(payload)
    ok: Any = ()
    for _ in range(31):  # 32 tuples in all: the limit
        ok = (ok,)
    assert rt(ok) == ok
    with pytest.raises(ValueError, match="nested more than 32 deep"):
        encode((ok,))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_a_codec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = encode(Image.new("L", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 - 1)
    with pytest.raises(CodecError, match="decompression bomb"):
        decode(wire)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 // 3)  # PIL itself raises past 2x
    with pytest.raises(CodecError, match="decompression bomb"):
        decode(wire)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode(wire).size == (100, 100)


class _WritesAFile:
    path = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.path), "pwned"))


def test_pickle_bomb_is_never_executed(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    bomb = _WritesAFile()
    bomb.path = str(target)
    data = pickle.dumps(bomb)
    # Sanity: unpickling really would write the file.
    pickle.loads(data)
    assert target.read_text() == "pwned"
    target.unlink()
    for blob in (data, msgpack.packb({"x": data}) + data, ext(5, data), ext(EXT_TUPLE, data)):
        with pytest.raises(CodecError):
            decode(blob)
    assert not target.exists()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- JSON


def test_to_jsonable_exact() -> None:
    value = {
        "s": "x",
        "i": 3,
        "b": True,
        "n": None,
        "f": 1.5,
        "nan": float("nan"),
        "inf": float("-inf"),
        "t": (1, (2, 3)),
        "bytes": b"\x00\x01hi",
        1: "int key",
        None: "none key",
        False: "bool key",
        2.5: "float key",
        "arr": np.array([[1, 2], [3, 4]], dtype=np.uint8),
        "farr": np.array([1.0, np.nan, np.inf], dtype=np.float32),
        "carr": np.array([1 + 2j]),
        "barr": np.array([True, False]),
        "scalar": np.float32(0.25),
        "tensor": torch.tensor([[1.5, 2.0]], dtype=torch.bfloat16),
        "itensor": torch.arange(3),
        "0d": torch.tensor(7),
    }
    assert to_jsonable(value) == {
        "s": "x",
        "i": 3,
        "b": True,
        "n": None,
        "f": 1.5,
        "nan": None,
        "inf": None,
        "t": [1, [2, 3]],
        "bytes": base64.b64encode(b"\x00\x01hi").decode(),
        "1": "int key",
        "null": "none key",
        "false": "bool key",
        "2.5": "float key",
        "arr": [[1, 2], [3, 4]],
        "farr": [1.0, None, None],
        "carr": [[1.0, 2.0]],
        "barr": [True, False],
        "scalar": 0.25,
        "tensor": [[1.5, 2.0]],
        "itensor": [0, 1, 2],
        "0d": 7,
    }


def test_to_jsonable_rejects_with_path() -> None:
    with pytest.raises(TypeError, match=r"value\['a'\]\[1\]"):
        to_jsonable({"a": [1, object()]})


def test_text_event_exact_bytes() -> None:
    event = text_event({"step": 5, "progress": 0.25, "shape": (2, 3), "name": "chat ✓"})
    assert event == b'data: {"step":5,"progress":0.25,"shape":[2,3],"name":"chat \xe2\x9c\x93"}\n\n'


def test_text_event_with_image_decodes_to_the_same_pixels() -> None:
    image = gradient("RGB", (64, 48))
    event = text_event({"image": image, "step": 1})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert b"\n" not in event[:-2]
    body = json.loads(event[len(b"data: ") : -2])
    assert body["step"] == 1
    prefix = "data:image/png;base64,"
    assert body["image"].startswith(prefix)
    back = Image.open(io.BytesIO(base64.b64decode(body["image"][len(prefix) :])))
    np.testing.assert_array_equal(pixels(back), pixels(image))


def test_text_event_of_a_decoded_jpeg_keeps_its_bytes() -> None:
    encoded = encode_image(gradient(), "jpeg", 60)
    decoded = decode(encode({"image": encoded}))
    body = json.loads(text_event(decoded)[6:-2])
    assert body["image"] == "data:image/jpeg;base64," + base64.b64encode(encoded.data).decode()


def test_text_event_handles_lone_surrogates() -> None:
    event = text_event({"s": "a\ud800b"})
    assert json.loads(event[6:-2]) == {"s": "a?b"}
