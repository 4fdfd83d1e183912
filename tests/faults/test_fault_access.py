"""Nobody else joins: another user cannot connect; another process of the same user is ignored.

* The control socket lives in a directory created with mode 0700 (socket 0600), owned by
  the host's user: another user's ``connect()`` fails with permission denied.
* A process of the same user can connect, but every message must carry the runner's
  32-byte session key, which is random per runner, travels to the workers only over the
  private spawn pipe, and is never written to disk, a command line or the environment.
  Without it nothing is decoded; forged results do not reach any caller. A live rank's
  routing id cannot be taken over (ZeroMQ refuses a second peer with the same id).

``test_isolation.py`` checks the modes and that keyless garbage is ignored.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from gridgen import DistributedRunner

from helpers.runtime import LiveRunner, live

NOBODY = 65534


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    with live() as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


def test_private_directory_and_socket(rt: LiveRunner) -> None:
    control_dir = rt.runner.control_dir
    assert control_dir is not None
    info = os.stat(control_dir)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    sock = os.stat(os.path.join(control_dir, "control"))
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600
    assert sock.st_uid == os.getuid()


def test_session_key_is_not_on_disk_argv_or_environment(rt: LiveRunner) -> None:
    key = rt.runner._control.key
    assert len(key) == 32
    needles = [key, key.hex().encode()]
    control_dir = rt.runner.control_dir
    assert control_dir is not None
    for path in Path(control_dir).iterdir():
        if path.is_file():
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
    for pid in rt.runner.pids:
        for part in ("cmdline", "environ"):
            data = Path(f"/proc/{pid}/{part}").read_bytes()
            assert not any(n in data for n in needles), (pid, part)


def test_forged_results_from_the_same_user_do_not_reach_the_caller(rt: LiveRunner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="gridgen")

    async def scenario(runner: DistributedRunner[Any]) -> Any:
        address = f"ipc://{runner.control_dir}/control"
        ctx = zmq.Context()
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(address)
        impostor = ctx.socket(zmq.DEALER)  # takes a live rank's routing id
        impostor.setsockopt(zmq.ROUTING_ID, b"g%d-r0" % runner._supervisor.generation)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.connect(address)
        try:
            handle = runner.submit({"op": "steps", "steps": 10, "delay": 0.05})
            while handle.status != "running":
                await asyncio.sleep(0.01)
            for rank_forged in (0, 1):
                forged = msgpack.packb(["done", handle.id, {"forged": rank_forged}])
                error = msgpack.packb(["error", handle.id, {"type": "X", "message": "forged", "traceback": ""}])
                for sock in (stranger, impostor):
                    for _ in range(20):  # guessing the key does not help
                        sock.send_multipart([secrets.token_bytes(32), forged])
                        sock.send_multipart([secrets.token_bytes(32), error])
            return await handle.result()
        finally:
            stranger.close()
            impostor.close()
            ctx.term()

    assert rt.run(scenario) == {"completed": 10, "cancelled": False}
    assert "dropped a control message without the session key" in caplog.text
    assert rt.sync.invoke({"op": "allreduce"}) == {"sum": 3}


def _as_another_user(path: str, control_dir: str) -> dict[str, Any]:
    """Fork, become uid/gid 65534 (nobody) and try to reach the socket; report what happened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only plain syscalls, then _exit
        report: dict[str, Any] = {}
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            report["uid"] = os.getuid()
            for name, attempt in (
                ("connect", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)),
                ("listdir", lambda: os.listdir(control_dir)),
                ("stat", lambda: os.stat(path)),
            ):
                try:
                    attempt()
                    report[name] = "ok"
                except OSError as exc:
                    report[name] = exc.errno
        except BaseException as exc:
            report["error"] = repr(exc)
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def test_another_user_cannot_connect(rt: LiveRunner) -> None:
    if os.getuid() != 0:
        pytest.skip("switching to another uid needs root; these tests run as an ordinary user")
    control_dir = rt.runner.control_dir
    assert control_dir is not None
    path = os.path.join(control_dir, "control")
    # the same user can (the check below is not failing for some other reason)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as same_user:
        same_user.connect(path)
    report = _as_another_user(path, control_dir)
    assert "error" not in report, report
    assert report["uid"] == NOBODY
    assert report["connect"] == errno.EACCES, report
    assert report["listdir"] == errno.EACCES, report
    assert report["stat"] == errno.EACCES, report
    assert rt.sync.invoke({"op": "allreduce"}) == {"sum": 3}
