"""The OpenAPI document describes every endpoint with the request and response models."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from gridgen import DistributedRunner
from gridgen.server import create_app
from gridgen.testing import ProbeWorker


def test_openapi_lists_the_endpoints_and_models() -> None:
    app = create_app(DistributedRunner(ProbeWorker, world_size=1, device="cpu"), title="my service")
    schema = app.openapi()
    assert schema["info"]["title"] == "my service"
    paths = schema["paths"]
    # /loras: the default request model (SDXL's) has a loras field
    assert set(paths) == {"/generate", "/stream", "/health", "/ready", "/loras"}
    for path in ("/generate", "/stream"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/GenerateRequest"}
        assert {"422", "500", "503"} <= set(paths[path]["post"]["responses"])
    ok = paths["/generate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/GenerateResult"}
    assert "text/event-stream" in paths["/stream"]["post"]["responses"]["200"]["content"]
    result = schema["components"]["schemas"]["GenerateResult"]["properties"]
    assert {"grid", "images", "seeds", "timings"} <= set(result)


def test_lifespan_starts_and_stops_the_runner() -> None:
    runner = DistributedRunner(ProbeWorker, world_size=1, device="cpu")
    app = create_app(runner)
    assert runner.state == "new"
    with TestClient(app) as client:  # runs the lifespan in the client's event loop
        deadline = time.monotonic() + 60
        while client.get("/ready").json()["state"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.05)  # the lifespan starts the runner in the background
        assert client.get("/ready").json()["state"] == "ready"
        assert client.get("/docs").status_code == 200
    assert runner.state == "stopped"
