"""A pickle whose unpickling writes a file, sent to every socket a runner's processes listen on.

Inventory (read from ``/proc/<pid>/net/{unix,tcp,tcp6}`` for each process's own sockets):

* the host listens on exactly one socket: the ZeroMQ ROUTER at ``<private dir>/control``
  (a Unix socket); no TCP listener, so no TCPStore: the ``torch.distributed`` rendezvous
  is a ``FileStore`` file in the same private directory;
* the workers listen on no Unix socket and open no gridgen socket; their only listeners
  are gloo's transport (one TCP port per rank, 127.0.0.1 only), which carries raw tensor
  bytes and unpickles nothing.

The pickle goes to the host's socket in every frame layout (from a stranger, and from an
authenticated rank), inside a payload to the workers, and to each gloo port: nothing is
written and the runner keeps working.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from test_fault_malformed import RawWorker

from helpers.runtime import LiveRunner, live

LISTEN_TCP = "0A"  # /proc/net/tcp state
UNIX_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket


class Bomb:
    """Unpickling this writes ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.write_text, (pathlib.Path(self.path), "unpickled!"))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def listeners(pid: int) -> dict[str, list[Any]]:
    """The listening sockets of process ``pid``: {"tcp": [(ip, port)], "unix": [path]}."""
    inodes = _socket_inodes(pid)
    found: dict[str, list[Any]] = {"tcp": [], "unix": []}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == LISTEN_TCP:
                address, port = fields[1].split(":")
                if table == "tcp":
                    ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                else:
                    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8))
                    ip = socket.inet_ntop(socket.AF_INET6, raw)
                found["tcp"].append((ip, int(port, 16)))
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and int(fields[3], 16) & UNIX_ACCEPTCON:
            found["unix"].append(fields[7] if len(fields) > 7 else "")
    return found


_BEFORE: dict[str, list[Any]] = {}


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[LiveRunner]:
    # What the test process listened on before this runner started (in a full run, earlier
    # modules' servers may still be closing): only what the runner adds is its own.
    _BEFORE.update(listeners(os.getpid()))
    with live(RawWorker, error_grace=2.0) as runner:
        yield runner


@pytest.fixture()
def rt(shared_rt: LiveRunner) -> LiveRunner:
    """The module's runner, ready and idle whatever the test before left."""
    return shared_rt.ensure_healthy()


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "written-by-unpickling"
    # the bomb is live: unpickling it really writes the file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Bomb(probe)))
    assert probe.read_text() == "unpickled!"
    return path


def _healthy(rt: LiveRunner) -> None:
    assert rt.sync.invoke({"op": "allreduce"}, timeout=30) == {"sum": 3}


def test_socket_inventory(rt: LiveRunner) -> None:
    control_dir = rt.runner.control_dir
    assert control_dir is not None
    host = listeners(os.getpid())
    added_tcp = sorted(set(host["tcp"]) - set(_BEFORE.get("tcp", [])))
    assert added_tcp == []  # no TCPStore, no TCP control channel
    assert f"{control_dir}/control" in host["unix"]
    # other runners of the test session (session-scoped fixtures) may be alive too
    ours = [path for path in host["unix"] if "gridgen-" in path and path not in _BEFORE.get("unix", [])]
    assert ours == [f"{control_dir}/control"]  # this runner listens on one socket only
    # the rendezvous store is a file in the private directory
    assert any(name.startswith("store-") for name in os.listdir(control_dir))
    for pid in rt.runner.pids:
        assert pid is not None
        worker = listeners(pid)
        assert worker["unix"] == [], worker
        assert worker["tcp"], "expected gloo's transport listener"
        assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for ip, _ in worker["tcp"]), worker


def test_pickle_to_the_control_socket_is_never_unpickled(rt: LiveRunner, marker: Path) -> None:
    bomb = pickle.dumps(Bomb(marker))
    ctx = zmq.Context()
    try:
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(f"ipc://{rt.runner.control_dir}/control")
        for frames in ([bomb], [bomb, bomb], [b"k" * 32, bomb], [bomb, bomb, bomb], [bomb[:32], bomb[32:]]):
            stranger.send_multipart(frames)
        # a live rank's identity: ZeroMQ refuses the second connection with that id
        impostor = ctx.socket(zmq.DEALER)
        impostor.setsockopt(zmq.ROUTING_ID, b"g%d-r0" % rt.runner._supervisor.generation)
        impostor.setsockopt(zmq.LINGER, 0)
        impostor.connect(f"ipc://{rt.runner.control_dir}/control")
        impostor.send_multipart([b"k" * 32, bomb])
        time.sleep(0.3)
        stranger.close()
        impostor.close()
    finally:
        ctx.term()
    # an authenticated rank sends it as a message body, and inside a stream item
    frames = [bomb, bytes(msgpack.packb(["item", 1, bomb]))]
    assert rt.sync.invoke({"op": "raw", "on_rank": 0, "frames": frames}, timeout=30) == {"sum": 3}
    # inside a payload and a result: it travels as bytes and stays bytes
    assert rt.sync.invoke({"op": "value", "value": {"blob": bomb}}) == {"blob": bomb}
    items = list(rt.sync.stream({"op": "value", "value": bomb}))
    assert items == [bomb]
    time.sleep(0.2)
    assert not marker.exists()
    _healthy(rt)


def test_pickle_to_the_gloo_ports_is_never_unpickled(rt: LiveRunner, marker: Path) -> None:
    bomb = pickle.dumps(Bomb(marker))
    for pid in rt.runner.pids:
        assert pid is not None
        for ip, port in listeners(pid)["tcp"]:
            with socket.create_connection((ip, port), timeout=5) as conn:
                conn.sendall(bomb * 4)
                time.sleep(0.1)
    time.sleep(0.3)
    assert not marker.exists()
    _healthy(rt)
