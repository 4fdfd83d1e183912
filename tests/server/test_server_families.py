"""The HTTP service over each tiny family on two CPU ranks: /generate, /stream with previews,
422 for a field the family refuses, and a playground that offers only the family's fields."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from helpers.server import LiveServer, decode_data_url, stream_events

MODELS = ("tiny-flux", "tiny-sd3")
SMALL = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "num_inference_steps": 2}


@pytest.fixture(scope="module", params=MODELS)
def server(request: pytest.FixtureRequest, family_cache: str) -> Iterator[tuple[str, LiveServer]]:
    from gridgen import DistributedRunner
    from gridgen.diffusion import family_of, worker_for
    from gridgen.sdxl import GenerateResult
    from gridgen.server import create_app

    model = str(request.param)
    runner = DistributedRunner(worker_for(model), world_size=2, device="cpu", setup_kwargs={"model": model})
    app = create_app(
        runner, request_model=family_of(model).request_model, response_model=GenerateResult, title=model
    )
    with LiveServer(app, runner) as live:
        yield model, live


def test_generate_and_stream(server: tuple[str, LiveServer]) -> None:
    _, live = server
    with live.client() as client:
        response = client.post("/generate", json={**SMALL, "num_images": 3, "seed": 4})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["seeds"] == [4, 5, 6] and body["num_images"] == 3
        assert decode_data_url(body["grid"]).size == (128, 128)
        events = stream_events(client, {**SMALL, "num_images": 2, "seed": 1, "preview_every": 1})
    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == [1, 2]
    assert decode_data_url(progress[0]["preview_image"], "image/jpeg").size == (32, 16)  # 2 previews of 16x16
    assert events[-1][0] == "result" and events[-1][1]["seeds"] == [1, 2]


def test_a_field_the_family_refuses_is_a_422(server: tuple[str, LiveServer]) -> None:
    model, live = server
    with live.client() as client:
        response = client.post("/generate", json={**SMALL, "negative_prompt": "blurry", "width": 72})
    if model == "tiny-flux":
        assert response.status_code == 422
        fields = {tuple(d["loc"]): d["type"] for d in response.json()["detail"]}
        assert fields == {("body", "negative_prompt"): "extra_forbidden", ("body", "width"): "multiple_of"}
    else:
        assert response.status_code == 422
        assert [d["loc"] for d in response.json()["detail"]] == [["body", "width"]]


def test_the_playground_offers_only_the_family_fields(server: tuple[str, LiveServer]) -> None:
    model, live = server
    with live.client() as client:
        page = client.get("/").text
    match = re.search(r'<script id="gridgen-config" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    fields: dict[str, Any] = json.loads(match.group(1))["fields"]
    assert ("negative_prompt" in fields) is (model == "tiny-sd3")
    assert fields["width"]["multipleOf"] == 16
    assert fields["num_inference_steps"]["default"] == 28
    assert 'data-field="negative_prompt"' in page  # hidden by the page's script when absent
