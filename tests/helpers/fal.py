"""Helpers for the fal-compatibility tests (a plain module: conftest names collide between folders)."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
FAL_IMPORT = "from gridgen.fal import DistributedRunner, DistributedWorker"
PLAIN_IMPORT = "from gridgen import DistributedRunner, DistributedWorker"


def plain_variant(module_name: str, directory: Path) -> ModuleType:
    """``tests/fal/<module_name>.py`` with its import line changed from gridgen.fal to gridgen.

    The copy is written to ``directory`` as ``<module_name>_plain.py`` and imported; the
    directory stays on ``sys.path`` so spawned workers (which get the parent's path)
    import the worker classes from the same file.
    """
    source = (HERE / f"{module_name}.py").read_text()
    assert source.count(FAL_IMPORT) == 1, f"{module_name}.py must import from gridgen.fal exactly once"
    (directory / f"{module_name}_plain.py").write_text(source.replace(FAL_IMPORT, PLAIN_IMPORT))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    return importlib.import_module(f"{module_name}_plain")


class LiveServer:
    """uvicorn serving ``app`` in a background thread on 127.0.0.1, on a free port.

    The app's lifespan (which starts its runner) runs in the server's own event loop.
    """

    def __init__(self, app: Any, startup_timeout: float = 120.0) -> None:
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-fal-test", daemon=True)
        self.startup_timeout = startup_timeout
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (the app's lifespan failed?)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {self.startup_timeout}s")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0)


def read_sse(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """POST ``body`` and read the whole ``text/event-stream`` body: the response and each
    event's parsed ``data:`` JSON, in order. Fails on anything that is not a ``data:`` line
    or a blank line, so a truncated or malformed body is caught."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as response:
        text = "".join(response.iter_text())
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    assert text.endswith("\n\n"), f"the body does not end with a complete event: {text[-200:]!r}"
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, f"not one data line: {block[:200]!r}"
        events.append(json.loads(block.removeprefix("data: ")))
    return response, events
