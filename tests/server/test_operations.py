"""Operating ``gridgen serve`` (issue 25): ``/metrics``, request ids, JSON logs, merging
under the default window, and Ctrl-C exiting 0. One real server process for the module
(two CPU ranks, the tiny model, ``--log-format json``); each test reads the metrics
before and after what it sends, so it needs nothing from the others.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.serve import ServeProcess, json_lines, sample, scrape

SMALL: dict[str, Any] = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2,
                         "image_format": "jpeg", "output": "images"}


@pytest.fixture(scope="module")
def server(tiny_cache: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("serve-ops") / "serve.log"
    process = ServeProcess(log, "--log-format", "json", "--max-queue", "16")
    try:
        yield process.wait_ready()
        # Ctrl-C on an idle server that served: a clean stop, status 0 (issue 26, item 2).
        process.signal(signal.SIGINT)
        assert process.wait(60) == 0, process.log()[-3000:]
        assert "interrupted" not in process.log()
    finally:
        process.stop()


def _idle(client: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while True:
        state = client.get("/ready").json()
        if state["queue_size"] == 0 and sample(scrape(client), "gridgen_requests_in_flight") == 0:
            return
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_metrics_parse_and_count_exactly_what_was_sent(server: ServeProcess) -> None:
    with server.client() as client:
        _idle(client)
        before = scrape(client)
        sizes = [1, 2, 1]
        for n in sizes:
            response = client.post("/generate", json={**SMALL, "num_images": n})
            assert response.status_code == 200, response.text
        invalid = client.post("/generate", json={**SMALL, "width": 65})
        assert invalid.status_code == 422
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    http = "gridgen_http_requests_total"
    assert delta(http, route="/generate", outcome="ok", status_class="2xx") == len(sizes)
    assert delta(http, route="/generate", outcome="invalid", status_class="4xx") == 1
    assert delta("gridgen_runner_requests_total", outcome="ok") == len(sizes)
    assert delta("gridgen_runner_requests_total", outcome="invalid") == 0  # refused by the app's model first
    assert delta("gridgen_images_total", family="sdxl") == sum(sizes)
    assert delta("gridgen_request_duration_seconds_count", outcome="ok") == len(sizes)
    for phase in ("queue_wait", "text_encode", "denoise", "decode", "gather", "encode"):
        assert delta("gridgen_phase_duration_seconds_count", phase=phase) == len(sizes), phase
    assert delta("gridgen_merged_call_requests_count") == len(sizes)  # one at a time: no merging
    assert delta("gridgen_merged_call_images_sum") == sum(sizes)
    assert sample(after, "gridgen_workers_ready") == 1
    assert sample(after, "gridgen_world_size") == 2
    assert sample(after, "gridgen_queue_depth") == 0
    assert delta("gridgen_worker_restarts_total") == 0 and delta("gridgen_new_shapes_total") == 0
    assert ("gridgen_gpu_memory_used_bytes", (("rank", "0"),)) not in after  # CPU: no GPU series


def test_a_burst_of_8_forms_one_merged_call_under_the_default_window(server: ServeProcess) -> None:
    # Without the window a burst always splits: its first request finds an empty queue and
    # runs alone. With it, a burst merges once its arrivals fit in 20 ms, which a starved
    # 2-core machine can stretch past (docs/concepts.md), so one burst of three must merge.
    burst = 8
    tries: list[tuple[float, float]] = []
    with server.client(limits=httpx.Limits(max_connections=burst)) as client:
        for _ in range(3):
            _idle(client)
            for _ in range(burst):  # open the connections first: the burst is then 8 sends
                client.get("/health")
            before = scrape(client)
            go = threading.Barrier(burst)
            statuses: list[int] = []

            def send(seed: int, go: threading.Barrier, statuses: list[int]) -> None:
                go.wait()
                statuses.append(client.post("/generate", json={**SMALL, "num_images": 1, "seed": seed}).status_code)

            threads = [threading.Thread(target=send, args=(seed, go, statuses)) for seed in range(burst)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            after = scrape(client)
            assert statuses == [200] * burst
            count, total = "gridgen_merged_call_requests_count", "gridgen_merged_call_requests_sum"
            tries.append((sample(after, count) - sample(before, count), sample(after, total) - sample(before, total)))
            if tries[-1] == (1, burst):
                break
    assert tries[-1] == (1, burst), f"every burst was split into several calls: (calls, requests) {tries}"


def test_the_request_id_round_trips(server: ServeProcess) -> None:
    with server.client() as client:
        ok = client.post("/generate", json=SMALL, headers={"x-request-id": "trace-ok-1"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-ok-1"
        invalid = client.post("/generate", json={**SMALL, "steps": "many", "width": 65},
                              headers={"x-request-id": "trace-422"})
        assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "trace-422"
        assert invalid.json()["request_id"] == "trace-422"
        missing = client.get("/nowhere", headers={"x-request-id": "trace-404"})
        assert missing.status_code == 404 and missing.json()["request_id"] == "trace-404"
        generated = client.post("/generate", json={**SMALL, "width": 65})
        assert len(generated.headers["x-request-id"]) == 32
        assert generated.json()["request_id"] == generated.headers["x-request-id"]
        forged = client.post("/generate", json={**SMALL, "width": 65}, headers={"x-request-id": "a b\tc" * 60})
        assert forged.headers["x-request-id"] != "a b\tc" * 60  # replaced: it could forge log lines
        with client.stream("POST", "/stream", json=SMALL, headers={"x-request-id": "trace-sse"}) as response:
            assert response.headers["x-request-id"] == "trace-sse"
            response.read()
    deadline = time.monotonic() + 10
    while True:
        ids = {entry.get("request_id") for entry in json_lines(server.log())}
        if {"trace-ok-1", "trace-422", "trace-404", "trace-sse"} <= ids:
            break
        assert time.monotonic() < deadline, ids
        time.sleep(0.1)


def test_every_log_line_is_one_json_object(server: ServeProcess) -> None:
    with server.client() as client:
        assert client.post("/generate", json=SMALL, headers={"x-request-id": "trace-json"}).status_code == 200
    time.sleep(0.2)
    entries = json_lines(server.log())  # raises on any line that is not a JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any(entry.get("rank") == 1 for entry in entries)  # the workers' lines are JSON too
    access = [e for e in entries if e["logger"] == "uvicorn.access" and e.get("request_id") == "trace-json"]
    assert access and "POST /generate" in access[0]["message"]


def test_the_dashboard_names_only_metrics_that_exist(server: ServeProcess) -> None:
    dashboard = json.loads((Path(__file__).parents[2] / "examples" / "grafana-dashboard.json").read_text())
    with server.client() as client:
        assert client.post("/generate", json=SMALL).status_code == 200  # every histogram has a series
        exported = {name for name, _ in scrape(client)}
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(queries) >= 10
    named = set()
    for expr in queries:
        named |= {word for word in _words(expr) if word.startswith(("gridgen_", "process_"))}
    assert named, queries
    unknown = named - exported - {"gridgen_gpu_memory_used_bytes"}  # exported on CUDA only
    assert not unknown, f"the dashboard queries metrics /metrics does not export: {sorted(unknown)}"
    from gridgen.metrics import METRIC_NAMES

    families = {name.removesuffix("_total") for name in METRIC_NAMES}
    assert {n for n in named if n.startswith("gridgen_")} <= {
        f"{f}{suffix}" for f in families for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }


def _words(expr: str) -> set[str]:
    import re

    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
