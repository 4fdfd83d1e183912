"""/health answers while the process lives; /ready is 200 only when the runner takes requests."""

from __future__ import annotations

import asyncio

import httpx

from gridgen import DistributedRunner
from gridgen.server import create_app
from gridgen.testing import ProbeWorker

from helpers.server import SMALL, LiveServer


def test_health_and_ready_on_a_started_service(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        health = client.get("/health")
        ready = client.get("/ready")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "state": "ready", "world_size": 2, "queue_size": 0, "max_queue": 4}


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
