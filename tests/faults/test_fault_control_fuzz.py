"""Host-level fuzzing: random and mutated frames sent to a live runner's control socket.

``test_codec_fuzz.py`` fuzzes the decoder alone; here the frames go through the real
socket into the running host, both from a stranger (any number of frames, random or
mutated valid messages, with and without a key-sized first frame) and from an
authenticated rank (bodies mutated from every kind of real worker message, request ids
pointing at the running request, at queued ones and at nothing). Whatever arrives, the
reader keeps running: every request ends with a result or a typed gridgen error, and the
next request works.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fault_malformed import RawWorker

from gridgen import GridgenError
from gridgen._codec import encode

from helpers.fuzz import mutate
from helpers.runtime import LiveRunner, live

LIMIT = 64 * 1024
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live(RawWorker, max_message_bytes=LIMIT, error_grace=2.0, request_timeout=30.0) as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


@pytest.fixture(scope="module")
def stranger(shared_rt: LiveRunner) -> Iterator[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{shared_rt.runner.control_dir}/control")
    yield sock
    sock.close()
    ctx.term()


def _seeds(request_id: int) -> list[bytes]:
    """Real worker messages of every kind, as encoded by gridgen.

    The request id is written as a fixed-width int64 (valid msgpack, just not the
    shortest form) so every seed has the same length whatever the id: hypothesis then
    draws the same way on replay, although the ids differ between runs.
    """
    info = {"type": "ValueError", "message": "m", "traceback": "Traceback ..."}
    messages: list[tuple[str, Any]] = [
        ("hello", {"pid": 1}),
        ("ready", None),
        ("setup_error", info),
        ("item", {"step": 1, "array": np.arange(3)}),
        ("done", {"x": (1, 2), "b": b"\x00"}),
        ("error", info),
        ("cancelled", None),
        ("released", None),
    ]
    fixed_id = b"\xd3" + struct.pack(">q", request_id)
    return [b"\x93" + encode(kind) + fixed_id + encode(data) for kind, data in messages]


@st.composite
def mutated_body(draw: st.DrawFn, request_id: int) -> bytes:
    return mutate(draw, draw(st.sampled_from(_seeds(request_id))), min_edits=0, max_insert=8)


def _frame() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=32, max_size=32),  # looks like a key
        mutated_body(1),
        st.builds(lambda v: bytes(msgpack.packb(v)), st.lists(st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)), max_size=4)),
    )


def _healthy(rt: LiveRunner) -> None:
    assert rt.runner.ready
    assert rt.sync.invoke({"op": "allreduce"}, timeout=30) == {"sum": 3}


@FUZZ
@given(messages=st.lists(st.lists(_frame(), min_size=1, max_size=5), min_size=1, max_size=20))
def test_strangers_random_frames_never_break_the_runner(
    rt: LiveRunner, stranger: zmq.Socket[bytes], messages: list[list[bytes]]
) -> None:
    for frames in messages:
        stranger.send_multipart(frames)
    _healthy(rt)


@FUZZ
@given(data=st.data())
def test_a_ranks_mutated_messages_never_break_the_runner(rt: LiveRunner, data: st.DataObject) -> None:
    next_id = int(repr(rt.runner._dispatcher._ids)[len("count(") : -1])  # the id the next request gets
    # ids: the fuzzing request itself, the one queued behind it, an old one and nonsense
    ids = st.sampled_from([next_id, next_id + 1, next_id - 1, 0, -1, 2**40])
    # (never an empty body: that is the worker's internal "close" signal, not sendable by user code)
    frames = data.draw(st.lists(ids.flatmap(mutated_body).filter(bool), min_size=1, max_size=12))
    on_rank = data.draw(st.sampled_from([0, 1]))

    async def scenario(runner: Any) -> list[Any]:
        fuzzing = runner.submit({"op": "raw", "on_rank": on_rank, "frames": frames})
        assert fuzzing.id == next_id
        queued = runner.submit({"op": "echo", "message": "queued"})
        outcomes = []
        for handle in (fuzzing, queued):
            try:
                outcomes.append(await handle.result())
            except GridgenError as exc:  # forged done/error for these ids may end them early
                outcomes.append(exc)
        return outcomes

    started = time.monotonic()
    outcomes = rt.run(scenario, timeout=90)
    assert time.monotonic() - started < 60
    assert len(outcomes) == 2  # both requests ended: a result or a typed error, none lost
    _healthy(rt)
