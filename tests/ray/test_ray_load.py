"""Load, backpressure and autoscaling through Ray Serve's HTTP proxy on the two-node cluster."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from gridgen.ray import REPLICA_HEADER, application

from helpers.ray_cluster import LocalRayCluster, deploy, wait_for

# A real two-node cluster: minutes on two cores, so not in the default run (README, "Tests").
# Its slowest tests take 45 s on a loaded machine: hence 300 s, not the global 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROBE = "gridgen.testing:ProbeWorker"
SPREAD = {"max_replicas_per_node": 1}


@pytest.fixture(scope="module")
def load_url(ray_cluster: LocalRayCluster) -> Iterator[str]:
    app = application(PROBE, num_replicas=2, max_queue=8, num_cpus=0.5, deployment_options=SPREAD)
    deploy(app, name="load", route_prefix="/load")
    yield f"{ray_cluster.url}/load"
    serve.delete("load")


def _outcome(i: int, response: httpx.Response) -> str:
    """What one response was, checked against what request ``i`` asked for."""
    if response.status_code == 200:
        assert response.json()["echo"] == i, "a result must belong to its own request"
        return "result"
    if response.status_code == 503:
        assert response.headers.get("retry-after"), "a 503 must say when to retry"
        return "busy"
    error = response.json()["error"]
    assert response.status_code == 500 and error["type"] == "WorkerError", response.text
    assert error["remote_type"] == "ValueError" and f"boom {i}" in error["message"]
    return "error"


def test_200_requests_at_concurrency_16_each_end_with_a_result_or_a_typed_error(load_url: str) -> None:
    def body(i: int) -> dict[str, Any]:
        if i % 10 == 3:
            return {"op": "raise", "on_rank": 0, "message": f"boom {i}"}
        return {"op": "echo", "message": i}

    limits = httpx.Limits(max_connections=16)
    with httpx.Client(base_url=load_url, timeout=120, limits=limits) as client:

        def one(i: int) -> tuple[str, str]:
            response = client.post("/generate", json=body(i))
            return _outcome(i, response), response.headers[REPLICA_HEADER]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(200)))

    assert len(outcomes) == 200
    kinds = Counter(kind for kind, _ in outcomes)
    assert kinds["error"] == 20, kinds  # every request asked to raise did, and only those
    assert kinds["result"] + kinds["busy"] == 180, kinds
    assert len({replica for _, replica in outcomes}) == 2, "both replicas served"


def _replica_counts(cluster: LocalRayCluster, metric: str, **labels: str) -> dict[str, float]:
    """``metric``'s value per replica of the ``load`` app, from both nodes' metrics agents."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(cluster.metrics()):
        for sample in family.samples:
            tags = sample.labels
            if sample.name == metric and tags.get("application") == "load" and labels.items() <= tags.items():
                counts[tags["replica"]] = counts.get(tags["replica"], 0.0) + sample.value
    return counts


def test_each_replica_exports_its_runner_metrics_through_ray(ray_cluster: LocalRayCluster, load_url: str) -> None:
    requests = "ray_gridgen_runner_requests_total"
    # The counts of the module's earlier requests may still be on their way (each replica
    # reports every second): start from numbers that held still for three reports.
    last: list[dict[str, float]] = []

    def settled() -> bool:
        last.append(_replica_counts(ray_cluster, requests))
        return len(last) > 1 and last[-1] == last[-2]

    wait_for(settled, 30, "the metrics of earlier requests to settle", interval=3.0)
    before_ok = _replica_counts(ray_cluster, requests, outcome="ok")
    before_errors = _replica_counts(ray_cluster, requests, outcome="worker_error")
    replicas: Counter[str] = Counter()
    with httpx.Client(base_url=load_url, timeout=60) as client:
        for i in range(24):
            body = {"op": "raise", "on_rank": 0, "message": "boom"} if i % 8 == 0 else {"op": "echo", "message": i}
            response = client.post("/generate", json=body)
            assert response.status_code in (200, 500), response.text
            replicas[response.headers[REPLICA_HEADER]] += 1

    def grown() -> bool:
        now_ok = _replica_counts(ray_cluster, requests, outcome="ok")
        now_errors = _replica_counts(ray_cluster, requests, outcome="worker_error")
        added_ok = sum(now_ok.values()) - sum(before_ok.values())
        added_errors = sum(now_errors.values()) - sum(before_errors.values())
        return (added_ok, added_errors) == (21, 3)

    wait_for(grown, 30, "the replicas' request counts to reach Ray's metrics agents")
    by_replica = _replica_counts(ray_cluster, requests, outcome="ok")
    assert set(replicas) <= set(by_replica), (replicas, by_replica)  # each answering replica has its own series
    ready = _replica_counts(ray_cluster, "ray_gridgen_workers_ready")
    assert set(replicas) <= set(ready) and all(v == 1 for v in ready.values()), ready
    latency = _replica_counts(ray_cluster, "ray_gridgen_request_duration_seconds_count", outcome="ok")
    assert sum(latency.values()) >= 21, latency


def test_full_cluster_answers_503_with_retry_after_and_no_replica_takes_more_than_its_queue(
    ray_cluster: LocalRayCluster,
) -> None:
    # Two replicas holding two requests each (one running, max_queue=1 waiting) and one more
    # held by the proxy: five at most. Requests arrive 0.4 s apart and each takes 4 s.
    app = application(
        PROBE, num_replicas=2, max_queue=1, max_queued_requests=1, retry_after=2.0, num_cpus=0.5,
        deployment_options=SPREAD,
    )
    deploy(app, name="tight", route_prefix="/tight")
    try:
        responses: dict[int, httpx.Response] = {}
        with httpx.Client(base_url=f"{ray_cluster.url}/tight", timeout=120) as client:

            def one(i: int) -> None:
                responses[i] = client.post("/generate", json={"op": "steps", "steps": 40, "delay": 0.1})

            threads = []
            for i in range(8):
                threads.append(threading.Thread(target=one, args=(i,)))
                threads[-1].start()
                time.sleep(0.4)
            for thread in threads:
                thread.join(timeout=60)
        statuses = Counter(r.status_code for r in responses.values())
        assert len(responses) == 8 and set(statuses) <= {200, 503}, statuses
        assert 4 <= statuses[200] <= 5, statuses
        for response in responses.values():
            if response.status_code == 503:
                assert response.headers["retry-after"] == "2"
                # Turned away by Ray's proxy, not by a replica whose runner queue overflowed.
                assert "backpressure" in response.text and "QueueFull" not in response.text
    finally:
        serve.delete("tight")


def _running_replicas(app: str) -> int:
    deployment = serve.status().applications[app].deployments["gridgen"]
    return int(deployment.replica_states.get("RUNNING", 0))


def test_autoscaling_adds_a_replica_when_requests_queue_and_removes_it_when_idle(
    ray_cluster: LocalRayCluster,
) -> None:
    # The defaults react in 10 s and 5 min; these knobs make the same policy fast.
    fast = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 0.0, "downscale_delay_s": 2.0,
            "metrics_interval_s": 0.5, "look_back_period_s": 1.0}
    app = application(PROBE, autoscaling=fast, max_queue=4, num_cpus=0.5, deployment_options=SPREAD)
    deploy(app, name="elastic", route_prefix="/elastic")
    try:
        assert _running_replicas("elastic") == 1
        stop = threading.Event()

        def keep_busy() -> None:
            with httpx.Client(base_url=f"{ray_cluster.url}/elastic", timeout=120) as client:
                while not stop.is_set():
                    client.post("/generate", json={"op": "steps", "steps": 5, "delay": 0.1})

        load = [threading.Thread(target=keep_busy) for _ in range(4)]
        for thread in load:
            thread.start()
        try:
            wait_for(lambda: _running_replicas("elastic") == 2, 60, "a second replica under load")
        finally:
            stop.set()
            for thread in load:
                thread.join(timeout=30)
        wait_for(lambda: _running_replicas("elastic") == 1, 60, "scaling back to one replica when idle")
    finally:
        serve.delete("elastic")
