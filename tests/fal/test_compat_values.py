"""Values fal users send and return, and the JSON form of stream events.

``Path``, ``datetime``, ``set``, dataclasses and ``Enum`` travel as their plain forms;
numpy scalars keep their type; anything else is refused with an error naming where it
sits. ``stream(..., as_text_events=True)`` events carry images and arrays in fal's shape.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gridgen import DistributedRunner, WorkerError
from gridgen._codec import decode, encode

from helpers.fal_workers import CompatWorker
from helpers.runtime import LiveRunner, live


@pytest.fixture(scope="module")
def compat() -> Iterator[LiveRunner]:
    with live(CompatWorker, error_grace=2.0) as rt:
        yield rt


def roundtrip(value: Any) -> Any:
    return decode(encode(value))


# -- the codec's plain forms -------------------------------------------------------------------


class Plain(enum.Enum):
    A = "a"
    NESTED = ("x", 1)


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: Plain | None = None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Path("/a/b.png"), "/a/b.png"),
        (PurePosixPath("rel/c"), "rel/c"),
        (datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=timezone.utc), "2026-01-02T03:04:05.006000+00:00"),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (date(2026, 1, 2), "2026-01-02"),
        (time(3, 4, 5), "03:04:05"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Plain.A, "a"),
        (Plain.NESTED, ("x", 1)),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ("a", "b")),
        ({frozenset({2, 1}): "key"}, {(1, 2): "key"}),
        ({1, "a"}, None),  # unsortable: a list in some order (checked below)
        (Point(1.0, 2.0, Plain.A), {"x": 1.0, "y": 2.0, "label": "a"}),
        ({"where": [Point(0.5, 0.0)]}, {"where": [{"x": 0.5, "y": 0.0, "label": None}]}),
    ],
    ids=repr,
)
def test_plain_forms(value: Any, expected: Any) -> None:
    out = roundtrip(value)
    if expected is None:
        assert sorted(map(str, out)) == ["1", "a"]
    else:
        assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    "value",
    [np.float32(0.25), np.float64(1e300), np.float16(1.5), np.int8(-3), np.int64(-7), np.uint8(255), np.uint64(2**64 - 1), np.bool_(True), np.complex64(1 + 2j)],
    ids=lambda v: type(v).__name__,
)
def test_numpy_scalars_keep_their_type(value: Any) -> None:
    out = roundtrip({"v": value})["v"]
    assert type(out) is type(value) and out == value


def test_numpy_scalars_in_text_events_are_json_numbers() -> None:
    from gridgen._events import text_event

    assert text_event({"a": np.float32(0.5), "b": np.int16(3), "c": np.bool_(False)}) == b'data: {"a":0.5,"b":3,"c":false}\n\n'


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"lock": object()}, "value['lock']"),
        ({"ok": [1, {"bad": lambda: None}]}, "value['ok'][1]['bad']"),
        (Point(1.0, object()), "value.y"),  # type: ignore[arg-type]
        ({"s": {object()}}, "an item of value['s']"),
    ],
    ids=["object", "nested lambda", "dataclass field", "set item"],
)
def test_other_values_are_refused_naming_where_they_sit(value: Any, where: str) -> None:
    with pytest.raises(TypeError) as info:
        encode(value)
    assert str(info.value).startswith(f"cannot encode {where}")


# -- through the runner ------------------------------------------------------------------------


def test_returned_values_arrive_as_plain_forms(compat: LiveRunner) -> None:
    result = compat.sync.invoke({"op": "values"})
    assert result["path"] == "/data/out/image.png"
    assert result["when"] == "2026-12-03T07:00:05+00:00"
    assert result["tags"] == ["a", "b"]
    assert result["box"] == {"name": "crop", "size": (3, 4), "color": 2}
    assert result["color"] == "red"
    for key, kind, value in (("f32", np.float32, 0.5), ("i64", np.int64, -7), ("u8", np.uint8, 255), ("flag", np.bool_, True)):
        assert type(result[key]) is kind and result[key] == value


def test_an_unencodable_result_is_a_clear_error(compat: LiveRunner) -> None:
    with pytest.raises(WorkerError) as info:
        compat.sync.invoke({"op": "unencodable"})
    assert info.value.rank == 0 and info.value.remote_type == "TypeError"
    assert "['handle']: objects of type _thread.lock are not supported" in info.value.remote_message
    assert compat.sync.invoke({"op": "value", "value": [1]}) == [1]


# -- fal-shaped text events --------------------------------------------------------------------


def stream_texts(rt: LiveRunner, payload: dict[str, Any]) -> list[Any]:
    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        return [item async for item in runner.stream(payload, as_text_events=True)]

    events = rt.run(body)
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    return [json.loads(e[6:]) for e in events]


def test_text_event_images_have_fals_shape(compat: LiveRunner) -> None:
    item, result = stream_texts(compat, {"op": "image"})
    image = item["image"]
    assert set(image) == {"url", "content_type", "width", "height"}
    assert image["content_type"] == "image/jpeg" and image["url"].startswith("data:image/jpeg;base64,")
    assert (image["width"], image["height"]) == (24, 16)
    assert (item["nested"][0]["width"], item["nested"][0]["height"]) == (8, 8)
    final = result["image"]  # the return value keeps the format it travelled in (PNG for a PIL image)
    assert final["content_type"] == "image/png" and (final["width"], final["height"]) == (5, 7)
    import io

    assert Image.open(io.BytesIO(base64.b64decode(final["url"].split(",", 1)[1]))).size == (5, 7)


def test_text_event_arrays_and_tensors_have_fals_shape(compat: LiveRunner) -> None:
    item, result = stream_texts(compat, {"op": "arrays"})
    array = item["array"]
    assert array == {
        "content_type": "application/ndarray",
        "dtype": "float32",
        "shape": [2, 3],
        "data": base64.b64encode(np.arange(6, dtype="<f4").tobytes()).decode(),
    }
    tensor = item["tensor"]
    assert tensor["content_type"] == "application/ndarray" and tensor["dtype"] == "bfloat16"
    assert tensor["shape"] == [1, 2]
    raw = torch.frombuffer(bytearray(base64.b64decode(tensor["data"])), dtype=torch.bfloat16)
    assert raw.tolist() == [1.5, -2.0]
    assert result == {"scalar": 2.5}


def test_an_error_ends_a_text_event_stream_with_an_error_event(compat: LiveRunner, caplog: pytest.LogCaptureFixture) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[bytes]:
        return [e async for e in runner.stream({"op": "items_then_raise", "items": 2, "on_rank": 1, "message": "disk full"}, as_text_events=True)]

    with caplog.at_level("ERROR", logger="gridgen"):
        events = compat.run(body)
    assert events[:2] == [b'data: {"step":1}\n\n', b'data: {"step":2}\n\n']
    assert json.loads(events[-1][6:]) == {"error": {"type": "ValueError", "message": "disk full", "rank": 1}}
    assert len(events) == 3
    assert any("disk full" in r.getMessage() for r in caplog.records)


def test_a_plain_stream_still_raises_the_typed_error(compat: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[Any]:
        return [e async for e in runner.stream({"op": "items_then_raise", "items": 1, "on_rank": 0})]

    with pytest.raises(WorkerError) as info:
        compat.run(body)
    assert info.value.rank == 0


# -- the event shapes, without a runner ------------------------------------------------------


def test_fal_shapes_of_an_encoded_image_keep_its_format() -> None:
    from gridgen import encode_image
    from gridgen._events import fal_shapes

    encoded = encode_image(Image.new("RGBA", (9, 4), (1, 2, 3, 4)), "webp")
    shaped = fal_shapes({"frames": (encoded,)})
    frame = shaped["frames"][0]
    assert frame["content_type"] == "image/webp" and (frame["width"], frame["height"]) == (9, 4)
    assert base64.b64decode(frame["url"].split(",", 1)[1]) == encoded.data


def test_fal_shapes_of_big_endian_and_strided_arrays_are_little_endian_c_order() -> None:
    from gridgen._events import fal_shapes

    arr = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    shaped = fal_shapes(arr)
    assert shaped["dtype"] == "int32" and shaped["shape"] == [3, 2]
    assert base64.b64decode(shaped["data"]) == np.ascontiguousarray(arr, dtype="<i4").tobytes()


def test_error_fields_of_host_side_errors() -> None:
    from gridgen import RequestTimeout, WorkerDiedError
    from gridgen._events import error_event, error_fields

    assert error_fields(WorkerDiedError(1, -9)) == {"type": "WorkerDiedError", "message": "worker rank 1 was killed by SIGKILL", "rank": 1}
    assert error_fields(RequestTimeout("too slow")) == {"type": "RequestTimeout", "message": "too slow", "rank": None}
    remote = WorkerError.from_remote(0, {"type": "mymod.OOM", "message": "no memory", "traceback": "Traceback..."})
    assert error_event(remote) == b'data: {"error":{"type":"mymod.OOM","message":"no memory","rank":0}}\n\n'
