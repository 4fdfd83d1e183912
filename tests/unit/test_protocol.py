"""The control protocol: message kinds, pack/parse of every frame, error info. No sockets."""

from __future__ import annotations

import msgpack
import pytest
import torch
import torch.distributed as dist

from gridgen import CodecError, InvalidRequestError, WorkerError
from gridgen._protocol import (
    HOST_KINDS,
    WORKER_KINDS,
    ErrorInfo,
    Kind,
    Message,
    failed_in_collective,
    pack,
    pack_call,
    parse,
    routing_id,
)


def test_kinds_split_by_direction() -> None:
    assert {Kind.CALL, Kind.BATCH, Kind.CANCEL, Kind.SHUTDOWN} == HOST_KINDS
    assert HOST_KINDS.isdisjoint(WORKER_KINDS)
    assert set(Kind) == HOST_KINDS | WORKER_KINDS


@pytest.mark.parametrize("kind", sorted(WORKER_KINDS, key=lambda k: k.value))
def test_every_worker_kind_round_trips(kind: Kind) -> None:
    frame = pack(kind, 12, {"x": [1, 2]})
    assert msgpack.unpackb(frame) == [kind.value, 12, {"x": [1, 2]}]  # plain on the wire
    assert parse(frame, WORKER_KINDS) == Message(kind, 12, {"x": [1, 2]})


def test_call_round_trips_and_its_data_is_checked() -> None:
    frame = pack_call(3, True, {"prompt": "a cat"}, max_bytes=None)
    assert parse(frame, HOST_KINDS) == Message(Kind.CALL, 3, [True, {"prompt": "a cat"}])
    bad = msgpack.packb(["call", 3, [True, {1: "x"}]])
    with pytest.raises(ValueError, match="call data"):
        parse(bad, HOST_KINDS)


def test_a_batch_carries_its_requests_call_frames() -> None:
    calls = [pack_call(4, True, {"a": 1}, max_bytes=None), pack_call(6, False, {"b": 2}, max_bytes=None)]
    message = parse(pack(Kind.BATCH, 4, calls), HOST_KINDS)
    assert message.kind is Kind.BATCH and message.request_id == 4
    assert message.data == [Message(Kind.CALL, 4, [True, {"a": 1}]), Message(Kind.CALL, 6, [False, {"b": 2}])]


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([], "non-empty list of call frames"),
        (["not bytes"], "non-empty list of call frames"),
        ([msgpack.packb(["cancel", 1, None])], "unknown message kind 'cancel'"),
        ([msgpack.packb(["call", 1, [False, {}]])] * 2, "names a request twice"),
    ],
)
def test_malformed_batches_are_value_errors(calls: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(msgpack.packb(["batch", 1, calls]), HOST_KINDS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["done", 1], "list \\[kind, request_id, data\\]"),
        ({"kind": "done"}, "list \\[kind, request_id, data\\]"),
        (["nope", 1, None], "unknown message kind 'nope'"),
        (["call", 1, [False, {}]], "unknown message kind 'call'"),  # a host kind from a worker
        (["done", "1", None], "request_id must be an int"),
        (["done", True, None], "request_id must be an int"),
    ],
)
def test_malformed_bodies_are_value_errors(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(msgpack.packb(body), WORKER_KINDS)


def test_bytes_that_do_not_decode_are_codec_errors() -> None:
    with pytest.raises(CodecError):
        parse(b"\xc1", WORKER_KINDS)


def test_routing_ids_name_generation_and_rank() -> None:
    assert routing_id(3, 1) == b"g3-r1"
    assert routing_id(3, 1) != routing_id(31, 1)


def _raise_in_dist() -> None:
    # A real torch.distributed call that raises: no process group is initialised here.
    dist.all_reduce(torch.ones(1))


def test_an_error_from_a_collective_is_flagged_by_the_worker() -> None:
    try:
        _raise_in_dist()
    except Exception as exc:
        info = ErrorInfo.from_exception(exc)
    assert info.in_collective is True
    assert "torch/distributed/" in info.traceback


def test_a_collective_error_reraised_as_the_users_own_type_is_still_flagged() -> None:
    class StepFailed(Exception):
        pass

    try:
        try:
            _raise_in_dist()
        except Exception as exc:
            raise StepFailed("step 3 failed") from exc
    except StepFailed as exc:
        assert failed_in_collective(exc)
        assert ErrorInfo.from_exception(exc).in_collective


def test_an_ordinary_error_is_not_flagged() -> None:
    try:
        raise ValueError("bad prompt")
    except ValueError as exc:
        info = ErrorInfo.from_exception(exc)
    assert info == ErrorInfo("ValueError", "bad prompt", info.traceback, False, False)


def test_error_info_is_read_leniently() -> None:
    assert ErrorInfo.from_wire("just text") == ErrorInfo("Exception", "just text")
    assert ErrorInfo.from_wire({"type": "X", "in_collective": "yes"}).in_collective is False
    info = ErrorInfo("a.B", "m", "tb", True, False)
    assert ErrorInfo.from_wire(info.to_wire()) == info


def test_an_invalid_request_from_a_rank_is_both_error_types() -> None:
    class Field:
        field, rule, message = "width", "multiple_of", "must be a multiple of 8"

    try:
        raise InvalidRequestError([Field()])
    except InvalidRequestError as exc:
        info = ErrorInfo.from_exception(exc)
    assert info.invalid_request
    error = WorkerError.from_remote(1, info.to_wire(), request_id=4)
    assert isinstance(error, WorkerError) and isinstance(error, InvalidRequestError)
    assert error.rank == 1 and error.request_id == 4
    assert "width: must be a multiple of 8" in str(error)
