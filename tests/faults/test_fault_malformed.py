"""Malformed frames and oversized payloads on the control socket.

* From a stranger (any local process of the same user that finds the socket): messages
  with the wrong number of frames or without the session key are dropped with a log line
  before anything is decoded; frames over ``max_message_bytes`` (+1 KiB of framing) are
  cut off by ZeroMQ itself (``MAXMSGSIZE``: the connection is dropped before the frame is
  buffered, so gridgen never sees it and logs nothing).
* From an authenticated rank (a buggy or compromised worker): bodies that do not decode,
  are too large or do not have the message shape are dropped with a log line naming the rank.
* From the caller: a payload over ``max_message_bytes`` fails in the caller with
  :class:`PayloadTooLarge` before anything is queued or sent; a result or stream item
  over the limit fails on the rank and comes back as a :class:`WorkerError`.

After each, the runner keeps working (an all-reduce over both ranks succeeds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from gridgen import DistributedRunner, PayloadTooLarge, WorkerError
from gridgen.testing import ProbeWorker

from helpers.runtime import LiveRunner, live

LIMIT = 64 * 1024


class RawWorker(ProbeWorker):
    """ProbeWorker plus ops that misuse the rank's real, authenticated channel to the host.

    * ``raw``: rank ``on_rank`` sends each of ``frames`` as a message body, as is (the I/O
      thread adds the session key, as for every message), then the bodies named in
      ``generate`` (too big to travel in the request), then all-reduces.
    * ``big_result`` / ``big_item``: returns / streams ``size`` bytes.
    """

    def __call__(self, streaming: bool = False, op: str = "echo", on_rank: int | None = None, **payload: Any) -> Any:
        if op == "raw":
            if on_rank in (None, self.rank):
                runtime = self._context.emit.__self__  # type: ignore[union-attr]  # the process's _WorkerRuntime
                for frame in [*payload.get("frames", []), *map(_generated, payload.get("generate", []))]:
                    runtime.io.send_frame(frame)
            return super().__call__(streaming, op="allreduce")
        if op == "big_result":
            return bytes(int(payload["size"]))
        if op == "big_item":
            self.add_streaming_result(bytes(int(payload["size"])))
            return None
        return super().__call__(streaming, op=op, on_rank=on_rank, **payload)


def _generated(name: str) -> bytes:
    if name == "nested":
        return b"\x91" * 60_000  # 60 000 nested arrays (within the size limit)
    if name == "oversized":  # over max_message_bytes, under MAXMSGSIZE
        return bytes(msgpack.packb(["item", 1, b"\x00" * (LIMIT + 100)]))
    raise ValueError(name)


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live(RawWorker, max_message_bytes=LIMIT, error_grace=2.0) as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


@pytest.fixture()
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level("WARNING", logger="gridgen")
    return caplog


def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and caplog.text.count(text) < count:
        time.sleep(0.02)
    assert caplog.text.count(text) >= count, f"expected {count} x {text!r} in:\n{caplog.text}"


def _healthy(rt: LiveRunner) -> None:
    assert rt.runner.ready
    assert rt.sync.invoke({"op": "allreduce"}, timeout=30) == {"sum": 3}


class Intruder:
    """A DEALER of the same user that connected to the runner's control socket."""

    def __init__(self, runner: DistributedRunner[Any], identity: bytes = b"intruder") -> None:
        self.ctx = zmq.Context()
        self.socket = self.ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, identity)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"ipc://{runner.control_dir}/control")

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def close(self) -> None:
        self.socket.close()
        self.ctx.term()


def test_strangers_malformed_frames_are_dropped_with_a_log_line(rt: LiveRunner, logs: pytest.LogCaptureFixture) -> None:
    intruder = Intruder(rt.runner)
    try:
        intruder.send(b"one frame")  # the host sees [identity, frame]: 2 frames
        intruder.send(b"")
        _wait_for_log(logs, "dropped a control message with 2 frames", 2)
        intruder.send(b"a", b"b", b"c")  # 4 frames
        intruder.send(*[b"x"] * 9)  # 10 frames
        _wait_for_log(logs, "dropped a control message with 4 frames")
        _wait_for_log(logs, "dropped a control message with 10 frames")
        body = msgpack.packb(["done", 1, None])
        intruder.send(b"k" * 32, body)  # right shape, wrong key
        intruder.send(b"", body)  # empty key
        intruder.send(b"short", b"\xc1\xc1")  # short key, undecodable body: never decoded
        _wait_for_log(logs, "dropped a control message without the session key", 3)
        assert "malformed" not in logs.text  # nothing from a stranger reaches the decoder
    finally:
        intruder.close()
    _healthy(rt)


def test_strangers_oversized_frames_are_cut_off_by_zeromq(rt: LiveRunner) -> None:
    intruder = Intruder(rt.runner, b"big")
    try:
        for _ in range(3):
            intruder.send(b"k" * 32, b"\x00" * (LIMIT * 16))  # 1 MiB frames against a 64 KiB limit
        time.sleep(0.3)
        _healthy(rt)
    finally:
        intruder.close()
    _healthy(rt)


MALFORMED_BODIES = [
    # (no empty body: the empty frame is the worker's internal "close" signal, not sendable by user code)
    b"\xc1",  # the one byte msgpack never uses
    b"\x93\xa4done",  # truncated array
    msgpack.packb([1, 2]),  # wrong shape
    msgpack.packb({"kind": "done"}),  # not a list
    msgpack.packb(["launch", 1, None]),  # unknown kind
    msgpack.packb(["done", "1", None]),  # request id not an int
    msgpack.packb(["done", True, None]),  # a bool is not a request id
    msgpack.packb(msgpack.ExtType(99, b"x")),  # unknown extension type
    b"\xd6\xff\x00\x00\x00\x00",  # msgpack's own timestamp extension (-1): not accepted
    b"\xdd\xff\xff\xff\xff",  # an array claiming 4 billion items
    b"\x91" * 1000 + b"\xc0",  # 1000 nested arrays
]
GENERATED = ["nested", "oversized"]


def test_malformed_bodies_from_a_rank_are_dropped_with_a_log_line(rt: LiveRunner, logs: pytest.LogCaptureFixture) -> None:
    payload = {"op": "raw", "on_rank": 1, "frames": MALFORMED_BODIES, "generate": GENERATED}
    result = rt.sync.invoke(payload, timeout=30)
    # the request that carried them completed normally
    assert result == {"sum": 3}
    _wait_for_log(logs, "dropped a malformed message from rank 1", len(MALFORMED_BODIES) + len(GENERATED))
    _healthy(rt)


def test_payload_over_the_limit_fails_in_the_caller_before_sending(rt: LiveRunner) -> None:
    calls_before = rt.sync.invoke({"op": "calls"})
    big = {"op": "value", "value": b"\x00" * (LIMIT + 1)}
    with pytest.raises(PayloadTooLarge):
        rt.sync.invoke(big)
    with pytest.raises(PayloadTooLarge):
        list(rt.sync.stream(big))

    async def submit(runner: DistributedRunner[Any]) -> int:
        with pytest.raises(PayloadTooLarge):
            runner.submit(big)
        return runner.queue_size

    assert rt.run(submit) == 0  # nothing was queued
    # the ranks never received them: only the two "calls" requests were served in between
    assert rt.sync.invoke({"op": "calls"}) == calls_before + 1
    _healthy(rt)


def test_result_or_item_over_the_limit_fails_on_the_rank(rt: LiveRunner) -> None:
    with pytest.raises(WorkerError) as info:
        rt.sync.invoke({"op": "big_result", "size": LIMIT + 1})
    assert info.value.rank == 0 and info.value.remote_type == "gridgen.errors.PayloadTooLarge"
    with pytest.raises(WorkerError) as info:
        list(rt.sync.stream({"op": "big_item", "size": LIMIT + 1}))
    assert info.value.remote_type == "gridgen.errors.PayloadTooLarge"
    _healthy(rt)
