"""Headless Chromium for the browser tests: the system's Chromium driven by Playwright's
Python package (``playwright install`` is not needed, and its download host may be out of
reach). Without either the tests skip, unless ``GRIDGEN_REQUIRE_BROWSER=1`` (CI sets it),
which turns the skip into a failure.

    apt-get install -y chromium      # Debian's package; or GRIDGEN_CHROMIUM=/path/to/chrome
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    return os.environ.get("GRIDGEN_CHROMIUM", "/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("GRIDGEN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GRIDGEN_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def sync_playwright() -> Any:
    """Playwright's ``sync_playwright``, or skip (fail with GRIDGEN_REQUIRE_BROWSER=1)."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright (no `playwright install` needed)")
    if not os.path.exists(chromium_path()):
        _unavailable(f"Chromium not found at {chromium_path()}: apt-get install -y chromium, or set GRIDGEN_CHROMIUM")
    return start


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)


def serve(app: Any, stop_seconds: float = 30) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL.
    Leaving waits up to ``stop_seconds`` for the app's shutdown (its runner's stop)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_seconds)


serving = contextlib.contextmanager(serve)
""":func:`serve` as a ``with`` block, for a test that serves an app of its own."""
