"""An invalid body is a 422 naming each bad field and its rule, before any worker sees it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gridgen import DistributedRunner
from gridgen.server import create_app
from gridgen.testing import ProbeWorker


def _post(path: str, body: Any) -> httpx.Response:
    # Validation happens before the handler: a runner that was never started is enough.
    app = create_app(DistributedRunner(ProbeWorker, world_size=2, device="cpu"))

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=body)

    return asyncio.run(scenario())


def _errors(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(str(p) for p in e["loc"][1:]): e["type"] for e in response.json()["detail"]}


@pytest.mark.parametrize("path", ["/generate", "/stream"])
def test_bad_fields_are_named_with_their_rule(path: str) -> None:
    body = {"prompt": "x", "width": 100, "height": 4096, "num_inference_steps": 0, "num_images": 65, "image_format": "gif"}
    assert _errors(_post(path, body)) == {
        "width": "multiple_of",
        "height": "less_than_equal",
        "num_inference_steps": "greater_than_equal",
        "num_images": "less_than_equal",
        "image_format": "literal_error",
    }


def test_missing_blank_and_unknown_fields() -> None:
    assert _errors(_post("/generate", {"steps": 4})) == {"prompt": "missing", "steps": "extra_forbidden"}
    errors = _post("/generate", {"prompt": "   "}).json()["detail"]
    assert [e["loc"] for e in errors] == [["body", "prompt"]]
    assert "empty" in errors[0]["msg"]


def test_booleans_and_non_objects_are_rejected() -> None:
    assert _errors(_post("/generate", {"prompt": "x", "seed": True})) == {"seed": "value_error"}
    response = _post("/generate", ["prompt"])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
