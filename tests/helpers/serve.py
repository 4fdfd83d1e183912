"""A real ``gridgen serve`` process on CPU ranks, for tests that talk to it as clients do:
``ServeProcess`` (the operations tests) and ``gridgen_serve`` (the OpenAI SDK tests).

``ServeProcess``'s stderr goes to a file (a pipe nobody reads would fill and block the
server); the URL comes from the banner line, which is plain text or, with
``--log-format json``, a JSON object.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


class ServeProcess:
    """``python -m gridgen.cli serve --model tiny --device cpu --port 0 ...``."""

    def __init__(self, log: Path, *args: str, workers: int = 2) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gridgen.cli", "serve", "--model", "tiny", "--device", "cpu",
             "--workers", str(workers), "--port", "0", *args],
            stdout=self._log, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.url = ""

    def wait_ready(self, timeout: float = 240.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while not self.url:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", self.log_path.read_text())
            if match:
                self.url = match.group(1)
                break
            self._check_alive(deadline)
            time.sleep(0.1)
        while httpx.get(f"{self.url}/ready", timeout=10).status_code != 200:
            self._check_alive(deadline)
            time.sleep(0.1)
        return self

    def _check_alive(self, deadline: float) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"gridgen serve exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gridgen serve not ready:\n{self.log_path.read_text()}")

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.url, **kwargs)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._log.close()


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed with prometheus_client's parser: ``{(sample name, labels): value}``."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a ``--log-format json`` log, parsed (asserting each is one JSON object)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        out.append(entry)
    return out



@contextmanager
def gridgen_serve(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Iterator[str]:
    """``gridgen serve --device cpu --port 0 ARGS...`` until ready; yields its base URL.

    Stopped with SIGINT (as Ctrl-C) at the end; its stderr is shown if it fails to start.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "gridgen.cli", "serve", "--device", "cpu", "--port", "0",
         "--log-level", "warning", *args],
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", banner)
        assert match, banner + process.stderr.read()
        url = match.group(1)
        lines: list[str] = []  # drained, so that a chatty server never blocks on a full pipe
        threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True).start()
        deadline = time.monotonic() + timeout
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
