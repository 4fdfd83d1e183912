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


def test_numbers_sent_as_strings_are_rejected_naming_the_field() -> None:
    errors = _post("/generate", {"prompt": "x", "width": "64", "guidance_scale": "5"}).json()["detail"]
    assert {e["loc"][-1]: e["type"] for e in errors} == {"width": "value_error", "guidance_scale": "value_error"}
    assert all("not a string" in e["msg"] for e in errors)


def test_only_a_number_in_quotes_is_told_to_drop_them() -> None:
    errors = _post("/generate", {"prompt": "x", "width": "wide", "height": "64", "seed": "four"}).json()["detail"]
    messages = {e["loc"][-1]: e["msg"] for e in errors}
    assert messages["height"].endswith("must be a number, not a string (write 64 without quotes)")
    assert messages["width"].endswith("must be a number, not a string")  # no "write wide without quotes"
    assert messages["seed"].endswith("must be a number, not a string")
    for error in errors:  # the validator's ValueError would be an empty {"error": {}}
        assert "ctx" not in error, error


def test_a_rules_context_is_kept() -> None:
    (error,) = _post("/generate", {"prompt": "x", "width": 4096}).json()["detail"]
    assert error["ctx"] == {"le": 2048}


def test_a_rejected_huge_input_is_not_echoed_back_in_full() -> None:
    prompt = "x" * 300_000  # over MAX_PROMPT_CHARS, under the body limit
    response = _post("/generate", {"prompt": prompt})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    (error,) = response.json()["detail"]
    assert error["type"] == "string_too_long"
    assert error["input"].startswith("x" * 200) and error["input"].endswith("(300000 characters)")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_a_413_with_the_limit(chunked: bool) -> None:
    app = create_app(DistributedRunner(ProbeWorker, world_size=2, device="cpu"), max_body_bytes=10_000)
    body = b'{"prompt": "' + b"x" * 20_000 + b'"}'

    async def chunks() -> Any:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            content = chunks() if chunked else body
            return await client.post("/generate", content=content, headers={"content-type": "application/json"})

    response = asyncio.run(scenario())
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "PayloadTooLarge"
    assert "10000 bytes" in response.json()["detail"]


def test_the_default_body_limit_is_32_mebibytes() -> None:
    from gridgen.server.app import DEFAULT_MAX_BODY_BYTES

    # room for a start image and a mask of a few megapixels as base64 PNG (issue 22)
    assert DEFAULT_MAX_BODY_BYTES == 32 << 20
    assert _post("/generate", {"prompt": "x" * (32 << 20)}).status_code == 413
    assert _post("/generate", {"prompt": "x" * 3000}).status_code == 422  # read, then too long a prompt
