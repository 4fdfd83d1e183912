"""``gridgen serve --ray ADDRESS``: deploys onto the cluster, prints the URL once ready, and
removes the deployment on Ctrl-C (a real subprocess, a real cluster, the tiny model)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from typing import IO

import httpx
import psutil
import pytest
from ray import serve

from gridgen.ray import REPLICA_HEADER

from helpers.ray_cluster import LocalRayCluster, alive, is_loopback, wait_for

# A real two-node cluster: minutes on two cores, so not in the default run (README, "Tests").
# Its slowest tests take 45 s on a loaded machine: hence 300 s, not the global 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def test_serve_ray_waits_until_ready_prints_the_url_and_tears_down_on_ctrl_c(ray_cluster: LocalRayCluster) -> None:
    command = [
        sys.executable, "-m", "gridgen.cli", "serve",
        "--ray", ray_cluster.address, "--replicas", "1-2",
        "--model", "tiny", "--device", "cpu", "--workers", "1",
        "--host", "127.0.0.1", "--port", str(ray_cluster.port), "--max-queue", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    stdout: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    threading.Thread(target=_lines, args=(process.stdout, stdout), daemon=True).start()
    threading.Thread(target=lambda: stderr.extend(line.rstrip() for line in process.stderr or []), daemon=True).start()
    try:
        try:
            url = stdout.get(timeout=150)
        except queue.Empty:
            raise AssertionError("no URL printed; stderr:\n" + "\n".join(stderr)) from None
        assert url == f"http://127.0.0.1:{ray_cluster.port}/"

        # Printed only once the deployment is ready: it answers at once.
        with httpx.Client(base_url=url, timeout=120) as client:
            ready = client.get("/ready")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            result = client.post("/generate", json={"prompt": "a boat", "width": 64, "height": 64,
                                                    "num_inference_steps": 2, "seed": 1})
            assert result.status_code == 200 and result.json()["seeds"] == [1]
            assert result.headers[REPLICA_HEADER]
        assert serve.status().applications["gridgen"].status == "RUNNING"
        replica = serve.get_app_handle("gridgen").status.remote().result(timeout_s=30)
        assert replica["devices"] == ["cpu"] and (replica["max_queue"], replica["max_ongoing"]) == (2, 3)
        serving = [psutil.Process(pid) for pid in replica["pids"]]
        exposed = [s for s in ray_cluster.listening() if not is_loopback(s[2])]
        assert not exposed, exposed

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=90) == 130, "\n".join(stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "gridgen" not in serve.status().applications
    wait_for(lambda: not any(alive(p) for p in serving), 30, "the replica's worker processes to exit")
    assert any("removing the 'gridgen' application" in line for line in stderr), stderr
