"""JSON for the web: :func:`to_jsonable` and :func:`text_event` (one server-sent event).

:func:`to_jsonable` turns a value into JSON-native data for server-sent events and
HTTP responses: images become ``data:image/<format>;base64,...`` URLs (keeping the
encoded format where known, see :mod:`gridgen.images`), arrays and tensors nested
lists (complex elements as ``[real, imag]`` pairs), bytes base64 strings, tuples lists,
dict keys strings, and non-finite floats ``None``. :func:`text_event` frames that as
one SSE ``data:`` event.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from ._arrays import _is_tensor, _tensor_to_numpy
from ._encode_errors import EncodeFailure, find_path, unsupported
from .images import EncodedImage, image_data_url

__all__ = ["text_event", "to_jsonable"]


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
    raise EncodeFailure(arr, f"numpy arrays of dtype {arr.dtype} have no JSON form")


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
            raise EncodeFailure(
                obj, f"this PIL image cannot be encoded: {exc}", ValueError
            ) from exc
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, np.ndarray):
        return _array_to_jsonable(np.asarray(obj))
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "biufc":
            return _array_to_jsonable(np.asarray(obj))
        raise unsupported(obj)
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
    raise unsupported(obj)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as JSON-native data (see "JSON" in the module docstring).

    Raises ``TypeError`` naming the type and its path for values with no JSON form.
    """
    try:
        return _jsonable(obj)
    except EncodeFailure as exc:
        where = find_path(obj, exc.obj, "value")
        raise exc.error(f"cannot convert {where} to JSON: {exc.reason}") from exc.__cause__
    except RecursionError:
        raise ValueError("cannot convert value to JSON: it is nested too deeply") from None


def text_event(obj: Any) -> bytes:
    """One server-sent event: ``b"data: " + compact JSON of to_jsonable(obj) + b"\\n\\n"``."""
    text = json.dumps(to_jsonable(obj), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # "replace" only matters for lone surrogates, which UTF-8 cannot carry.
    return b"data: " + text.encode("utf-8", "replace") + b"\n\n"
