"""The SDXL worker's output encoder: parallel-slice PNG (ISA-L's deflate, or zlib's where isal
is missing), numpy grids, Adler-32 joining."""

from __future__ import annotations

import concurrent.futures
import io
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from gridgen import make_grid
from gridgen.diffusion import encoding
from gridgen.diffusion.encoding import OutputEncoder, _adler32_combine, encode_png, grid_array


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture(params=["isal", "zlib"])
def deflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each PNG test with ISA-L's deflate (a dependency of gridgen[sdxl]) and with the fallback."""
    from isal import isal_zlib

    assert encoding._deflate is isal_zlib  # installed, so it is what the workers use
    if request.param == "zlib":
        monkeypatch.setattr(encoding, "_deflate", zlib)
    return str(request.param)


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()  # also checks every chunk's CRC and the zlib stream's Adler-32
    return np.asarray(image)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (5, 9, 4), (1024, 1024, 3), (700, 1100, 4)])
@pytest.mark.parametrize("threads", [0, 4])
def test_png_decodes_to_the_same_pixels(
    shape: tuple[int, int, int], threads: int, pool: concurrent.futures.Executor, deflate: str
) -> None:
    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    array[: shape[0] // 2] //= 7  # some compressible rows too
    data = encode_png(array, pool if threads else None)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    np.testing.assert_array_equal(_decode(data), array)


def test_large_images_are_compressed_in_several_slices(pool: concurrent.futures.Executor, deflate: str) -> None:
    array = np.zeros((1024, 1024, 3), dtype=np.uint8)  # 3 MB: one slice per thread here
    sliced, whole = encode_png(array, pool), encode_png(array, None)
    assert sliced != whole  # each slice ends with its own sync flush
    np.testing.assert_array_equal(_decode(sliced), array)


def test_isal_and_zlib_streams_both_decode_and_isal_compresses_a_photo_better(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    y, x = np.mgrid[0:512, 0:512]
    smooth = np.stack([x // 2 % 256, y // 2 % 256, (x + y) // 4 % 256], axis=-1)
    photo = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    fast = encode_png(photo)
    monkeypatch.setattr(encoding, "_deflate", zlib)
    standard = encode_png(photo)
    assert fast != standard
    np.testing.assert_array_equal(_decode(fast), photo)
    np.testing.assert_array_equal(_decode(standard), photo)
    assert len(fast) < len(standard)


def test_adler32_of_a_join_is_combined_from_the_parts() -> None:
    rng = np.random.default_rng(3)
    for size_a, size_b in [(0, 5), (1, 1), (1000, 70000), (65521, 65521 * 3 + 7)]:
        a, b = rng.bytes(size_a), rng.bytes(size_b)
        assert _adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 10])
def test_grid_array_lays_out_like_make_grid(n: int) -> None:
    images = np.random.default_rng(n).integers(0, 256, (n, 6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(grid_array(images), np.asarray(make_grid(list(images))))


def test_bad_arrays_are_rejected_with_the_rule() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3 or 4\) uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3 or 4\) uint8"):
        encode_png(np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_encoder_makes_grid_and_images(fmt: str) -> None:
    images = np.random.default_rng(5).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    encoder = OutputEncoder(threads=2)
    try:
        out = encoder.encode_outputs(images, "both", fmt, 90)
        assert set(encoder.encode_outputs(images, "grid", fmt, 90)) == {"grid"}
    finally:
        encoder.close()
    assert out["grid"].format == fmt and [e.format for e in out["images"]] == [fmt] * 3
    assert out["grid"].open().size == (48, 32)
    if fmt == "png":  # lossless
        np.testing.assert_array_equal(np.asarray(out["grid"].open()), grid_array(images))
        for encoded, image in zip(out["images"], images, strict=True):
            np.testing.assert_array_equal(np.asarray(encoded.open()), image)
