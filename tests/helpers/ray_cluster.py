"""A real two-node Ray cluster on this machine for the Ray tests, loopback only.

Imported as ``from helpers.ray_cluster import LocalRayCluster``, like the other helpers,
since several ``conftest.py`` files share the name ``conftest``.

Every Ray process binds 127.0.0.1: Ray binds its gRPC servers to loopback only when a node's
address is exactly ``127.0.0.1``. ``ray.init`` would still rewrite a ``127.0.0.1`` cluster
address into the machine's network address (and find nothing listening there) unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray treat this machine as
local-only; conftest.py sets it before Ray is imported, and the processes started
here inherit it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

HERE = Path(__file__).resolve().parents[1]  # tests/: helpers.* import from there
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class LocalRayCluster:
    """A Ray head and one more node (``ray.cluster_utils.Cluster``), with Ray Serve's HTTP
    proxy on 127.0.0.1, started and stopped by the test session.

    Each node has ``num_cpus`` logical CPUs (a number for Ray's bookkeeping, not cores).
    Serve runs one proxy, on the head ("HeadOnly"): both simulated nodes share this
    machine's loopback address, so a proxy per node would fight over one port.
    """

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.cluster: Any = None
        self.temp_dir = ""
        self.address = ""
        self.port = 0
        self.url = ""
        self.metrics_ports: list[int] = []
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> LocalRayCluster:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        # Replica actors and their worker processes import test workers from this folder.
        self._set_env("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        self._set_env("RAY_USAGE_STATS_ENABLED", "0")
        # Ray's router waits 0.1 s for a replica's queue length before it drops that replica
        # from the choice; on two loaded cores that probe is often late, and routing then
        # looks random. A second is still far below any request here.
        self._set_env("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1.0")
        self._set_env("RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "2.0")
        # Short: Ray's Unix socket paths live under it and must stay under 108 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="ggray-")
        # Ray writes the cluster's address to $RAY_TMPDIR/ray/ray_current_cluster (default
        # /tmp/ray, which Ray does not create when given a temp_dir: on a fresh machine the
        # start failed), and `ray.init("auto")` reads it: a private one per session, so two
        # sessions on one machine do not find each other's cluster.
        self._set_env("RAY_TMPDIR", self.temp_dir)
        os.makedirs(os.path.join(self.temp_dir, "ray"))
        node = {"num_cpus": self.num_cpus, "node_ip_address": "127.0.0.1"}
        # Each node's metrics agent on a port of its own; replicas report every second
        # (Ray's default, 10 s, would make the metrics test wait that long).
        self.metrics_ports = [free_port(), free_port()]
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                **node, "include_dashboard": False, "temp_dir": self.temp_dir,
                "metrics_export_port": self.metrics_ports[0],
                "_system_config": {"metrics_report_interval_ms": 1000},
            },
        )
        self.cluster.add_node(**node, metrics_export_port=self.metrics_ports[1])
        self.address = self.cluster.address
        ray.init(address=self.address, logging_level=logging.WARNING)
        self.port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def metrics(self) -> str:
        """What the nodes' metrics agents export now (Prometheus text), both nodes together."""
        import httpx

        return "".join(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text for port in self.metrics_ports)

    def _set_env(self, key: str, value: str) -> None:
        self._saved_env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def processes(self) -> list[psutil.Process]:
        """Every process of the cluster: the nodes' own (GCS, raylets, agents...) and all their
        descendants (Serve's actors, replicas and the gridgen workers they spawned)."""
        roots = []
        for node in [self.cluster.head_node, *self.cluster.worker_nodes]:
            for infos in node.all_processes.values():
                for info in infos:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        roots.append(psutil.Process(info.process.pid))
        found = {p.pid: p for p in roots}
        for root in roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in root.children(recursive=True):
                    found[child.pid] = child
        return list(found.values())

    def listening(self) -> list[tuple[int, str, str]]:
        """``(pid, process name, address)`` of every listening TCP socket of the cluster's
        processes and of this test process (which is the cluster's driver)."""
        sockets = []
        for process in [psutil.Process(), *self.processes()]:
            try:
                connections = process.net_connections(kind="inet")
                name = process.name()
            except psutil.NoSuchProcess:
                continue
            for conn in connections:
                if conn.status == psutil.CONN_LISTEN:
                    sockets.append((process.pid, name, str(conn.laddr.ip)))
        return sockets


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def deploy(app: Any, name: str, route_prefix: str | None = "/") -> Any:
    """``serve.run`` ``app`` as ``name`` (waits until every replica is up); returns its handle."""
    from ray import serve

    return serve.run(app, name=name, route_prefix=route_prefix)


def undeploy(name: str) -> None:
    from ray import serve

    serve.delete(name)


def replica_statuses(handle: Any, replicas: int, tries: int = 40) -> dict[str, dict[str, Any]]:
    """``status()`` of every replica, by replica id (calls until ``replicas`` distinct ones answered)."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        status = handle.status.remote().result(timeout_s=30)
        seen[status["replica"]] = status
        if len(seen) >= replicas:
            break
    return seen


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
