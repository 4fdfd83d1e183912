"""Encoding the SDXL worker's outputs on rank 0 without slowing the next request.

The grid of 8 full-size images is 3072x2048 pixels. Pillow's PNG encoder compresses it in
64 KB pieces on one core and takes the GIL back between pieces, so while it runs in a
background thread the thread launching the next request's kernels waits for the GIL
(measured: PNG output cost 7 % of throughput on an H200, JPEG far less). Here PNG is
written by :func:`encode_png`: the rows are filtered with numpy (PNG filter "Up": one
vectorised subtraction) and the deflate stream is compressed in parallel slices by
``zlib`` in threads, which release the GIL for the whole slice; the slices are joined
the way ``pigz`` joins them (each slice primed with the previous 32 KB, sync-flushed, one
Adler-32 combined from the slices' own). Decoded, the pixels are exactly the input's.

The deflate itself is ISA-L's (``isal``, installed with ``gridgen[sdxl]``) when it imports,
else the standard library's ``zlib`` (the same API and stream format). At level 1, in one
thread on the development machine (``bench/png_bench.py --threads 0``), ISA-L encoded a
1024x1024 photograph-like image in 9.5 ms against zlib's 60.4 (to 2.05 MB against 2.21)
and noise in 6.1 against 64.2 ms.

:class:`OutputEncoder` is what the worker holds: it lays out the grid with numpy, encodes
PNG as above and JPEG/WebP with Pillow (which costs a fraction of PNG's time).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import struct
import zlib
from typing import Any

import numpy as np

try:
    from isal import isal_zlib as _deflate
except ImportError:  # no wheel for this platform: the standard library's, several times slower
    _deflate = zlib  # type: ignore[misc, unused-ignore]

from .._codec import EncodedImage, encode_image

__all__ = ["OutputEncoder", "encode_png", "grid_array"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WINDOW = 32768  # deflate's window: each slice may refer this far back into the previous one
_MIN_SLICE = 1 << 18  # a 256 KB slice still takes milliseconds: far above a thread hand-off
_ADLER_BASE = 65521


def grid_array(images: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``(n, H, W, C)`` uint8 -> one ``(rows*H, cols*W, C)`` array, laid out as ``make_grid`` does."""
    n, height, width, channels = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if rows * cols != n:
        filler = np.zeros((rows * cols - n, height, width, channels), dtype=images.dtype)
        images = np.concatenate([images, filler])
    tiled = images.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(tiled).reshape(rows * height, cols * width, channels)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of ``a + b`` from ``adler32(a)``, ``adler32(b)`` and ``len(b)`` (zlib's formula)."""
    rem = second_length % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (second & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


def _deflate_slice(data: memoryview, start: int, stop: int, last: bool, level: int) -> tuple[bytes, int]:
    primer = bytes(data[max(0, start - _WINDOW) : start])
    if _deflate is not zlib:
        level = min(level, 3)  # ISA-L's levels are 0 to 3
    compressor = (
        _deflate.compressobj(level, zlib.DEFLATED, -15, zdict=primer)
        if primer
        else _deflate.compressobj(level, zlib.DEFLATED, -15)
    )
    piece = data[start:stop]
    out = compressor.compress(piece) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return out, _deflate.adler32(piece)


def encode_png(
    array: np.ndarray[Any, Any],
    pool: concurrent.futures.Executor | None = None,
    level: int = 1,
) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` or ``(H, W, 4)`` uint8 array, compressed in slices on ``pool``.

    Without a pool (or for small images) the same stream is made in one slice here.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"encode_png takes an (H, W, 3 or 4) uint8 array, got {array.dtype} {array.shape}")
    height, width, channels = array.shape
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter "Up": each byte minus the byte above it, modulo 256
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    raw = filtered.reshape(-1).data
    size = len(raw)
    slices = 1 if pool is None else max(1, min(getattr(pool, "_max_workers", 1), size // _MIN_SLICE))
    bounds = [size * i // slices for i in range(slices + 1)]
    jobs = [(raw, bounds[i], bounds[i + 1], i == slices - 1, level) for i in range(slices)]
    if slices == 1 or pool is None:
        parts = [_deflate_slice(*job) for job in jobs]
    else:
        parts = list(pool.map(lambda job: _deflate_slice(*job), jobs))
    checksum = 1
    for (_, adler), start, stop in zip(parts, bounds[:-1], bounds[1:], strict=True):
        checksum = _adler32_combine(checksum, adler, stop - start)
    stream = b"\x78\x01" + b"".join(out for out, _ in parts) + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


class OutputEncoder:
    """Grids and encodes uint8 ``(n, H, W, 3)`` batches: PNG in parallel slices, JPEG/WebP by Pillow.

    ``threads`` compress one PNG's slices at once (``0``: one slice in the calling
    thread, which is what a CPU-only worker wants).
    """

    def __init__(self, threads: int | None = None) -> None:
        if threads is None:
            threads = min(8, os.cpu_count() or 1)
        self.pool = (
            concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="gridgen-png")
            if threads > 1
            else None
        )

    def encode(self, array: np.ndarray[Any, Any], image_format: str, quality: int) -> EncodedImage:
        if image_format == "png":
            return EncodedImage(encode_png(array, self.pool), "png")
        from PIL import Image

        return encode_image(Image.fromarray(array), image_format, quality)

    def encode_outputs(
        self, images: np.ndarray[Any, Any], output: str, image_format: str, quality: int
    ) -> dict[str, Any]:
        """``{"grid": ...}``, ``{"images": [...]}`` or both, as ``output`` asks."""
        result: dict[str, Any] = {}
        if output in ("grid", "both"):
            result["grid"] = self.encode(grid_array(images), image_format, quality)
        if output in ("images", "both"):
            result["images"] = [self.encode(image, image_format, quality) for image in images]
        return result

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

