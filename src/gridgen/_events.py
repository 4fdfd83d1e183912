"""What ``runner.stream(..., as_text_events=True)`` yields: one server-sent event per item.

Each item becomes ``b"data: " + compact JSON + b"\\n\\n"``, in the JSON shapes fal's
clients read:

* an image (a PIL image or an :class:`~gridgen.EncodedImage`) is
  ``{"url": "data:image/<format>;base64,...", "content_type": "image/<format>", "width", "height"}``,
  in the format it travelled in (``add_streaming_result`` items: JPEG unless its
  ``image_format`` says otherwise; a returned PIL image: PNG);
* a numpy array or a tensor is ``{"content_type": "application/ndarray", "dtype", "shape",
  "data"}``, ``data`` being the base64 of its elements in C order, little-endian
  (``bfloat16`` as its 16-bit pattern);
* everything else as :func:`gridgen._json.to_jsonable` makes it (numpy scalars as numbers,
  bytes as base64, tuples as lists ...).

An error ends such a stream with :func:`error_event`:
``data: {"error": {"type": ..., "message": ..., "rank": ...}}``.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
from PIL import Image

from ._json import text_event as _json_event
from .errors import GridgenError, WorkerError
from .images import EncodedImage, image_data_url

__all__ = ["error_event", "error_fields", "fal_shapes", "text_event", "text_events"]

logger = logging.getLogger("gridgen.runner")

NDARRAY_CONTENT_TYPE = "application/ndarray"


def _image(image: Image.Image | EncodedImage) -> dict[str, Any]:
    url = image_data_url(image)
    size = image.open().size if isinstance(image, EncodedImage) else image.size
    return {
        "url": url,
        "content_type": url[5 : url.index(";")],
        "width": size[0],
        "height": size[1],
    }


def _ndarray(name: str, shape: tuple[int, ...], data: bytes) -> dict[str, Any]:
    return {
        "content_type": NDARRAY_CONTENT_TYPE,
        "dtype": name,
        "shape": list(shape),
        "data": base64.b64encode(data).decode("ascii"),
    }


def _array(arr: np.ndarray[Any, Any]) -> dict[str, Any]:
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return _ndarray(arr.dtype.name, arr.shape, little.tobytes())


def _tensor(tensor: Any) -> dict[str, Any]:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        bits = tensor.view(torch.int16).numpy().astype("<i2")
        return _ndarray("bfloat16", tuple(tensor.shape), bits.tobytes())
    return _array(tensor.numpy())


def fal_shapes(obj: Any) -> Any:
    """``obj`` with its images, arrays and tensors replaced by their fal JSON shapes.

    Containers are rebuilt (dicts, lists; tuples become lists); other values are left for
    ``to_jsonable``. Items come out of the codec, which cannot build cycles.
    """
    if isinstance(obj, dict):
        return {key: fal_shapes(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [fal_shapes(value) for value in obj]
    if isinstance(obj, (Image.Image, EncodedImage)):
        return _image(obj)
    if isinstance(obj, np.ndarray):
        return _array(obj)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return _tensor(obj)
    return obj


def text_event(obj: Any) -> bytes:
    """One server-sent event for a stream item or result (see the module docstring)."""
    return _json_event(fal_shapes(obj))


def error_fields(error: BaseException) -> dict[str, Any]:
    """``{"type", "message", "rank"}`` of an error: the remote exception's for a
    :class:`~gridgen.WorkerError`, else the error's own (``rank`` None when it has none)."""
    if isinstance(error, WorkerError) and error.remote_type:
        return {"type": error.remote_type, "message": error.remote_message, "rank": error.rank}
    return {"type": type(error).__name__, "message": str(error), "rank": getattr(error, "rank", None)}


def error_event(error: BaseException) -> bytes:
    """The last event of a failed ``as_text_events`` stream: ``data: {"error": {...}}``."""
    return _json_event({"error": error_fields(error)})


async def text_events(items: AsyncGenerator[Any, None]) -> AsyncGenerator[bytes, None]:
    """``items`` as :func:`text_event` bytes; an error ends them with :func:`error_event`."""
    try:
        async for item in items:
            yield text_event(item)
    except Exception as exc:  # anything: the response must end with the error, not be cut off
        logger.error(
            "a text-event stream ended with an error event: %s", error_fields(exc),
            exc_info=not isinstance(exc, GridgenError),
        )
        yield error_event(exc)
    finally:
        await items.aclose()
