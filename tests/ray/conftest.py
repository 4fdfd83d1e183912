"""The Ray tests' cluster: two simulated nodes on this machine, started once per session.

Each test module deploys its own application(s) on it and deletes them when done; tests
leave their application healthy. When the session ends the cluster is stopped and the
fixture checks that none of its processes is left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

# Before Ray is imported anywhere: see helpers.ray_cluster's docstring.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every driver of the session (this process, the CLI under test) gets this job config, the
# way `ray job submit` hands one to its entrypoint: see helpers.ray_workers.loopback_only.
os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps(
    {"runtime_env": {"worker_process_setup_hook": "helpers.ray_workers.loopback_only"}}
)

from helpers.ray_cluster import LocalRayCluster, alive, wait_for


@pytest.fixture(scope="session")
def ray_cluster(tiny_cache: str) -> Iterator[LocalRayCluster]:
    """The running cluster (after GRIDGEN_CACHE is set, so every replica finds the tiny model)."""
    with LocalRayCluster() as cluster:
        yield cluster
        everything = cluster.processes()
    wait_for(lambda: not any(alive(p) for p in everything), 30, "every Ray and gridgen process to exit")
