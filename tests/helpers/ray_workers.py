"""Workers for the Ray tests, importable by Ray's worker processes as ``helpers.ray_workers``
(the cluster's PYTHONPATH includes tests/)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from gridgen.testing import ProbeWorker


class LedgerWorker(ProbeWorker):
    """``ProbeWorker`` that, when the payload names a ``ledger`` file, appends one JSON line
    when a request starts on a rank and one with its outcome: a test outside the cluster
    can see whether GPU work ran to the end or stopped because it was cancelled."""

    def setup(self, setup_delay: float = 0.0, **kwargs: Any) -> None:
        """``setup_delay``: seconds every (re)start takes, so that a restart can be watched."""
        time.sleep(setup_delay)
        super().setup(**kwargs)

    def __call__(self, streaming: bool = False, ledger: str | None = None, **payload: Any) -> Any:
        if ledger is None:
            return super().__call__(streaming=streaming, **payload)
        tag = payload.get("message", "")
        self._write(ledger, {"event": "start", "tag": tag, "rank": self.rank, "pid": os.getpid()})
        result = super().__call__(streaming=streaming, **payload)
        self._write(ledger, {"event": "end", "tag": tag, "rank": self.rank, "result": result})
        return result

    @staticmethod
    def _write(path: str, entry: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def loopback_only() -> None:
    """``worker_process_setup_hook`` of the test cluster's jobs (see conftest.py).

    A Ray Serve replica binds its inter-deployment gRPC server to ``[::]:0`` whatever the
    node's address (ray/serve/_private/replica.py); every other Ray server follows the node
    address, 127.0.0.1 here. This rebinds that one to the node address too, so nothing in
    the test session listens beyond loopback.
    """
    import ray
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    node_ip = ray.util.get_node_ip_address()

    def on_node_address(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{node_ip}:{address.rsplit(':', 1)[1]}"
        return bind(server, address)

    replica.add_port_to_grpc_server = on_node_address
