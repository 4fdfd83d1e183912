"""The SDXL service on Ray Serve: the tiny model on one CPU rank per replica, two replicas on
two simulated nodes, reached through Ray's HTTP proxy and through a Python handle."""

from __future__ import annotations

import base64
import concurrent.futures
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from ray import serve

from gridgen.ray import REPLICA_HEADER, application

from helpers.ray_cluster import LocalRayCluster, deploy, is_loopback, replica_statuses
from helpers.server import sse_events

# A real two-node cluster: minutes on two cores, so not in the default run (README, "Tests").
# Its slowest tests take 45 s on a loaded machine: hence 300 s, not the global 120 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SMALL: dict[str, Any] = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "num_inference_steps": 2}


@dataclass
class SDXLApp:
    url: str
    handle: Any

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)


@pytest.fixture(scope="module")
def sdxl_app(ray_cluster: LocalRayCluster) -> Iterator[SDXLApp]:
    app = application(
        "gridgen.sdxl:SDXLWorker",
        setup_kwargs={"model": "tiny"},
        prepare="gridgen.sdxl:ensure_tiny_sdxl",
        num_replicas=2,
        cpu_ranks=1,
        num_cpus=0.5,
        max_queue=4,
        title="gridgen on ray",
        deployment_options={"max_replicas_per_node": 1},
    )
    handle = deploy(app, name="sdxl", route_prefix="/sdxl")
    yield SDXLApp(f"{ray_cluster.url}/sdxl", handle)
    serve.delete("sdxl")


def _image(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))


def test_generate_requests_spread_over_both_replicas(sdxl_app: SDXLApp) -> None:
    replicas = replica_statuses(sdxl_app.handle, 2)
    assert len({s["node_id"] for s in replicas.values()}) == 2

    def one(seed: int) -> httpx.Response:
        with sdxl_app.client() as client:
            return client.post("/generate", json={**SMALL, "seed": seed})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert all(r.status_code == 200 for r in responses), [r.text[:200] for r in responses]
    assert {r.headers[REPLICA_HEADER] for r in responses} == set(replicas)
    for seed, response in enumerate(responses):
        result = response.json()
        assert result["seeds"] == [seed]
        assert _image(result["grid"]).size == (64, 64)


def test_stream_sends_server_sent_events_through_the_proxy(sdxl_app: SDXLApp) -> None:
    body = {**SMALL, "num_inference_steps": 3, "preview_every": 1, "seed": 5}
    with sdxl_app.client() as client, client.stream("POST", "/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers[REPLICA_HEADER]
        events = list(sse_events(response.iter_lines()))
    assert [name for name, _ in events] == ["queued", "progress", "progress", "progress", "result"]
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3]
    assert events[-1][1]["seeds"] == [5]


def test_every_endpoint_names_its_replica(sdxl_app: SDXLApp) -> None:
    with sdxl_app.client() as client:
        health = client.get("/health")
        ready = client.get("/ready")
        page = client.get("/")
        schema = client.get("/openapi.json")
        invalid = client.post("/generate", json={**SMALL, "width": 65})
    for response in (health, ready, page, schema, invalid):
        assert response.headers.get(REPLICA_HEADER), response.url
    assert health.json() == {"status": "ok"}
    assert ready.json()["ready"] is True and ready.json()["world_size"] == 1
    assert "gridgen on ray" in page.text
    assert schema.json()["info"]["title"] == "gridgen on ray"
    assert invalid.status_code == 422
    assert any("width" in error["loc"] for error in invalid.json()["detail"])


def test_handle_streams_previews_then_the_result(sdxl_app: SDXLApp) -> None:
    body = {**SMALL, "num_inference_steps": 2, "preview_every": 1, "seed": 9}
    items = list(sdxl_app.handle.options(stream=True).stream.remote(body))
    assert [item["step"] for item in items[:-1]] == [1, 2]
    assert items[-1]["seeds"] == [9]
    with pytest.raises(ValueError, match="width"):
        sdxl_app.handle.invoke.remote({**SMALL, "width": 65}).result(timeout_s=30)


def test_nothing_listens_beyond_loopback(ray_cluster: LocalRayCluster, sdxl_app: SDXLApp) -> None:
    sockets = ray_cluster.listening()
    names = {name for _, name, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any("ProxyActor" in n for n in names), names
    exposed = [s for s in sockets if not is_loopback(s[2])]
    assert not exposed, exposed


def test_the_openai_sdk_generates_and_edits_through_the_proxy(sdxl_app: SDXLApp) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{sdxl_app.url}/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    result = client.images.generate(prompt="a lighthouse", size="64x64", n=2,
                                     extra_body={"num_inference_steps": 2, "seed": 3})
    sizes = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in result.data]
    assert sizes == [(64, 64), (64, 64)]
    start = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 120, 20)).save(start, "PNG")
    edited = client.images.edit(image=("start.png", start.getvalue(), "image/png"), prompt="an orange field",
                                size="64x64", extra_body={"num_inference_steps": 2, "seed": 3, "strength": 0.5})
    assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in edited.data] == [(64, 64)]
