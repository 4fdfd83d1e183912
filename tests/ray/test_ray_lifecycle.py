"""A whole cluster's life in one test: a head and a second node start, a deployment serves,
everything listens on loopback only, and after the stop no process of it is left."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from helpers.ray_cluster import HERE, alive, is_loopback, wait_for

# A real two-node cluster: minutes on two cores, so not in the default run (README, "Tests").
# Its slowest tests take 45 s on a loaded machine: hence 300 s, not the global 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Its own cluster in a child process: this test process is already the driver of the
# session's cluster, and a process drives one cluster at a time.
SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
import httpx
from ray import serve
from gridgen.ray import application
from helpers.ray_cluster import LocalRayCluster

with LocalRayCluster() as cluster:
    app = application("gridgen.testing:ProbeWorker", num_replicas=2, cpu_ranks=2, num_cpus=0.5,
                      deployment_options={{"max_replicas_per_node": 1}})
    handle = serve.run(app, name="life", route_prefix="/")
    answer = httpx.post(cluster.url + "/generate", json={{"op": "allreduce"}}, timeout=60).json()
    workers = handle.status.remote().result(timeout_s=30)["pids"]
    report = {{"answer": answer, "workers": workers, "listening": cluster.listening(),
              "pids": [p.pid for p in cluster.processes()]}}
print(json.dumps(report))
"""


def test_cluster_and_deployment_listen_on_loopback_and_leave_nothing_running(ray_cluster: object) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["answer"] == {"sum": 3}  # two CPU ranks joined by torch.distributed

    names = {name for _, name, _ in report["listening"]}
    assert {"gcs_server", "raylet"} <= names, names
    exposed = [s for s in report["listening"] if not is_loopback(s[2])]
    assert not exposed, exposed

    pids = set(report["pids"])
    assert set(report["workers"]) <= pids  # gridgen's worker processes belong to the cluster
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    wait_for(lambda: not any(alive(p) for p in processes), 30, "every process of the stopped cluster to exit")
