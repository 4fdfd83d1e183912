"""No fixed ports, nothing beyond loopback, a private control directory, a session key."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Any

import psutil
import zmq

from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker

from helpers.runtime import LiveRunner


def test_two_runners_at_once() -> None:
    async def main() -> list[Any]:
        a = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        b = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await asyncio.gather(a.start(), b.start())
        try:
            return await asyncio.gather(a.invoke({"op": "allreduce"}), b.invoke({"op": "echo", "message": "b"}))
        finally:
            await asyncio.gather(a.stop(), b.stop())

    first, second = asyncio.run(main())
    assert first == {"sum": 3} and second["echo"] == "b"


def test_listens_on_loopback_only(probe: LiveRunner) -> None:
    pids = [os.getpid(), *[p for p in probe.runner.pids if p]]
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN or not conn.raddr:
                assert conn.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), (pid, conn)


def test_control_directory_is_private(probe: LiveRunner) -> None:
    control_dir = probe.runner.control_dir
    assert control_dir is not None
    assert stat.S_IMODE(os.stat(control_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(control_dir, "control")).st_mode) == 0o600


def test_messages_without_the_session_key_are_ignored(probe: LiveRunner) -> None:
    control_dir = probe.runner.control_dir
    assert control_dir is not None
    ctx = zmq.Context()
    intruder = ctx.socket(zmq.DEALER)
    intruder.setsockopt(zmq.ROUTING_ID, b"g1-r0")
    intruder.setsockopt(zmq.LINGER, 0)
    intruder.connect(f"ipc://{control_dir}/control")
    try:
        # a forged "done", a wrong key, garbage, and a pickle: none may disturb the runner
        import pickle

        intruder.send_multipart([b"k" * 32, b"\x93\xa4done\x01\xc0"])
        intruder.send_multipart([b"garbage"])
        intruder.send_multipart([b"x" * 32, pickle.dumps({"a": 1})])
        assert probe.sync.invoke({"op": "echo", "message": "still fine"})["echo"] == "still fine"
    finally:
        intruder.close()
        ctx.term()
