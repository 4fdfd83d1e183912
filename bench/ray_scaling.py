"""Scaling on Ray Serve: requests per second through the HTTP proxy with 1 and 2 replicas.

The worker sleeps 200 ms per request (``ProbeWorker``'s ``steps`` op: one 0.2 s step), so
a replica serves at most 5 requests/s whatever the CPU, and two cores do not limit two
replicas: the figure measures gridgen's and Ray's overhead, not compute.

    python bench/ray_scaling.py [--requests 200] [--concurrency 8] [--json out.json]

It starts its own Ray cluster on this machine (two nodes, loopback only), deploys each
size in turn, warms it, drives ``--requests`` requests with ``--concurrency`` clients in
flight, and stops everything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
from typing import Any

# Before Ray is imported: a cluster on 127.0.0.1 stays on loopback (see tests/ray/ray_helpers.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

from gridgen.ray import application

BODY = {"op": "steps", "steps": 1, "delay": 0.2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drive(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:

        def one(_: int) -> tuple[int, float]:
            started = time.perf_counter()
            status = client.post("/generate", json=BODY).status_code
            return status, time.perf_counter() - started

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(2 * concurrency)))  # warm: connections, routing stats
            started = time.perf_counter()
            results = list(pool.map(one, range(requests)))
            elapsed = time.perf_counter() - started
    ok = sum(1 for status, _ in results if status == 200)
    latencies = sorted(latency for _, latency in results)
    return {
        "requests": requests,
        "ok": ok,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(ok / elapsed, 3),
        "latency_median_s": round(latencies[len(latencies) // 2], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    temp_dir = tempfile.mkdtemp(prefix="ggbench-")
    node = {"num_cpus": 2, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False, "temp_dir": temp_dir})
    cluster.add_node(**node)
    figures: dict[str, Any] = {}
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        port = _free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2):
            app = application(
                "gridgen.testing:ProbeWorker", num_replicas=replicas, max_queue=16, num_cpus=0.5,
                deployment_options={"max_replicas_per_node": 1},
            )
            serve.run(app, name="bench", route_prefix="/")
            figures[f"{replicas}_replica"] = _drive(f"http://127.0.0.1:{port}", args.requests, args.concurrency)
            serve.delete("bench")
            print(replicas, "replica(s):", figures[f"{replicas}_replica"], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    ratio = figures["2_replica"]["requests_per_second"] / figures["1_replica"]["requests_per_second"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, ray {ray.__version__}",
        "worker": "ProbeWorker steps op: one 0.2 s sleep per request, 1 CPU rank per replica",
        "concurrency": args.concurrency,
        **figures,
        "speedup_2_over_1": round(ratio, 3),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
