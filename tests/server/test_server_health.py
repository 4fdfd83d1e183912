"""/health answers while the process lives; /ready is 200 only when the runner takes requests."""

from __future__ import annotations

import asyncio
import time

import httpx

from gridgen import DistributedRunner
from gridgen.server import create_app
from gridgen.testing import ProbeWorker

from helpers.browser import serving
from helpers.server import SMALL, LiveServer


def test_health_and_ready_on_a_started_service(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        health = client.get("/health")
        ready = client.get("/ready")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "state": "ready", "world_size": 2, "queue_size": 0, "max_queue": 4}


def test_head_answers_like_get_without_a_body(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        for path in ("/", "/health"):  # what uptime checkers ask for
            get, head = client.get(path), client.head(path)
            assert head.status_code == 200, (path, head.status_code)
            assert head.content == b""
            assert head.headers["content-type"] == get.headers["content-type"]
            assert head.headers["content-length"] == get.headers["content-length"]
        assert "head" not in client.get("/openapi.json").json()["paths"]["/health"]


def test_not_started_runner_is_not_ready_and_refuses_requests_with_503() -> None:
    # Without a lifespan (ASGITransport sends none) the runner is never started: state "new".
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    app = create_app(runner)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (
                await client.get("/health"),
                await client.get("/ready"),
                await client.post("/generate", json=SMALL),
                await client.post("/stream", json=SMALL),
            )

    health, ready, generate, stream = asyncio.run(scenario())
    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["state"] == "new"
    assert int(ready.headers["retry-after"]) >= 1
    for response in (generate, stream):
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "RunnerClosed"
        assert "not started" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) >= 1
    assert runner.state == "new"  # nothing was started by a request


def test_service_listens_at_once_and_ready_says_503_starting_until_the_workers_are_ready() -> None:
    # Rank 1's setup hangs: the workers never get ready, yet the server answers.
    runner = DistributedRunner(
        ProbeWorker, world_size=2, device="cpu", setup_kwargs={"hang_on_rank": 1}, start_timeout=60
    )
    with serving(create_app(runner), stop_seconds=60) as base:
        url = base.rstrip("/")
        assert httpx.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["state"] in ("new", "starting") and ready.json()["ready"] is False
        time.sleep(0.5)
        assert httpx.get(f"{url}/ready", timeout=5).json()["state"] == "starting"
        refused = httpx.post(f"{url}/generate", json=SMALL, timeout=5)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert runner.state == "stopped"


def test_a_runner_that_fails_to_start_leaves_ready_503_failed_with_the_error() -> None:
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu", setup_kwargs={"fail_on_rank": 0})
    failures: list[BaseException] = []
    with serving(create_app(runner, on_start_failed=failures.append), stop_seconds=60) as base:
        url = base.rstrip("/")
        deadline = time.monotonic() + 60
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures and "setup failed on purpose" in str(failures[0])
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["state"] == "failed"
        assert "setup failed on purpose" in ready.json()["error"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
