"""Unit tests: pure parts only. Any process or socket made here fails the test that made it."""

from __future__ import annotations

import multiprocessing.process
import socket
import subprocess
from typing import Any

import pytest
import zmq


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unit tests may not create {what}; move this test to tests/runtime")

    return refuse


@pytest.fixture(autouse=True)
def _no_processes_or_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("a process"))
    # asyncio's own self-pipe is a socketpair: refuse what reaches out, not every socket.
    monkeypatch.setattr(socket.socket, "bind", _refuse("a listening socket"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("a connection"))
    monkeypatch.setattr(zmq.Context, "socket", _refuse("a ZeroMQ socket"))
