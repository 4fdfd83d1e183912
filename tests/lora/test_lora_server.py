"""LoRA adapters over HTTP: ``GET /loras``, ``/generate``, ``/stream``, 422s naming the adapter,
and the playground's picker with its scale slider (in headless Chromium).

One live service for the module: FLUX.1 tiny on two CPU ranks, two adapters registered by
name (``setup(loras=...)``, what ``--lora NAME=PATH`` gives). References come from a
FLUX.1 worker built directly, on one rank.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gridgen.diffusion import FluxWorker

from helpers.browser import launch, sync_playwright
from helpers.lora import SMALL, apart, pixels, with_loras
from helpers.server import LiveServer, decode_data_url, stream_events

REQUEST = {**SMALL, "output": "grid"}


@pytest.fixture(scope="module")
def adapters(lora_folders: dict[str, Path]) -> dict[str, Path]:
    folder = lora_folders["tiny-flux"]
    return {"ink": folder / "a.safetensors", "sun.v2": folder / "b.safetensors"}


@pytest.fixture(scope="module")
def server(adapters: dict[str, Path]) -> Iterator[LiveServer]:
    from gridgen import DistributedRunner
    from gridgen.server import create_app

    setup = {"model": "tiny-flux", "loras": {name: str(path) for name, path in adapters.items()}}
    runner = DistributedRunner(FluxWorker, world_size=2, device="cpu", setup_kwargs=setup)
    app = create_app(runner, request_model=FluxWorker.family.request_model, title="lora test")
    with LiveServer(app, runner) as live:
        yield live


@pytest.fixture(scope="module")
def solo(adapters: dict[str, Path]) -> FluxWorker:
    worker = FluxWorker()
    worker.setup(model="tiny-flux", loras={name: str(path) for name, path in adapters.items()})
    return worker


def _grid(body: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    return [np.asarray(decode_data_url(body["grid"]).convert("RGB"))]


def _reference(solo: FluxWorker, payload: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    return pixels({"images": [solo(**{**payload, "output": "images"})["images"][0]]})


def test_get_loras_lists_the_registered_adapters(server: LiveServer) -> None:
    with server.client() as client:
        body = client.get("/loras").json()
    assert body == {"loras": ["ink", "sun.v2"], "max_per_request": 4, "min_scale": -2.0, "max_scale": 2.0}


def test_generate_and_stream_apply_the_adapters(server: LiveServer, solo: FluxWorker) -> None:
    payload = with_loras(REQUEST, ("ink", 1.0), ("sun.v2", -0.5))
    with server.client() as client:
        plain = client.post("/generate", json=REQUEST)
        adapted = client.post("/generate", json=payload)
        events = stream_events(client, payload)
    assert plain.status_code == adapted.status_code == 200, adapted.text
    assert apart(_grid(adapted.json()), _reference(solo, payload)) < 0.05
    assert apart(_grid(plain.json()), _reference(solo, REQUEST)) < 0.05
    assert apart(_grid(adapted.json()), _grid(plain.json())) > 1.0
    name, result = events[-1]
    assert name == "result"
    assert apart(_grid(result), _grid(adapted.json())) < 0.05


@pytest.mark.parametrize(
    ("name", "status", "rule"),
    [("nope", 422, "unknown_lora"), ("../ink", 422, "lora_path"), ("a/b", 422, "lora_path")],
)
def test_bad_adapter_names_are_422s_naming_the_adapter(
    server: LiveServer, name: str, status: int, rule: str
) -> None:
    with server.client() as client:
        for path in ("/generate", "/stream"):
            response = client.post(path, json=with_loras(REQUEST, (name, 1.0)))
            assert response.status_code == status, response.text
            text = response.text
            assert rule in text and name.replace("\\", "\\\\") in text, text
        assert client.get("/ready").json()["queue_size"] == 0


def test_the_openai_routes_take_loras_through_extra_body(server: LiveServer, solo: FluxWorker) -> None:
    import base64
    import io

    openai = pytest.importorskip("openai")
    from PIL import Image

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    extra = {"num_inference_steps": SMALL["num_inference_steps"], "seed": SMALL["seed"]}
    loras = [{"name": "ink", "scale": 1.0}, {"name": "sun.v2", "scale": -0.5}]
    result = client.images.generate(prompt=SMALL["prompt"], size="64x64", extra_body={**extra, "loras": loras})
    with Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))) as image:
        got = [np.asarray(image.convert("RGB"))]
    assert apart(got, _reference(solo, with_loras(REQUEST, ("ink", 1.0), ("sun.v2", -0.5)))) < 0.05
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", size="64x64", extra_body={**extra, "loras": [{"name": "nope"}]})
    assert caught.value.code == "unknown_lora" and "'nope'" in str(caught.value)


@pytest.mark.browser
def test_the_playground_picks_an_adapter_and_a_scale(server: LiveServer, solo: FluxWorker) -> None:
    with sync_playwright()() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            sent: list[Any] = []
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/stream") else None)
            page.goto(server.url + "/")
            _wait_for(page, '!document.getElementById("lora-box").hidden')
            options = page.locator("#lora-name option").all_inner_texts()
            assert options == ["none", "ink", "sun.v2"]
            assert page.is_disabled("#lora-scale")  # no adapter picked: no scale to set
            page.select_option("#lora-name", "ink")
            page.fill("#lora-scale", "0.75")
            assert page.inner_text("#lora-scale-value") == "0.75"
            for field, value in (("prompt", REQUEST["prompt"]), ("width", 64), ("height", 64),
                                 ("num_inference_steps", 2), ("seed", REQUEST["seed"]), ("num_images", 1)):
                page.fill(f"[name={field}]", str(value))
            page.click("#generate")
            page.wait_for_selector('#stage img[data-kind="final grid"]', timeout=60_000)
            assert sent[-1]["loras"] == [{"name": "ink", "scale": 0.75}]
            grid = page.eval_on_selector("#stage img", "img => img.src")
        finally:
            browser.close()
    want = _reference(solo, with_loras(REQUEST, ("ink", 0.75)))
    assert apart([np.asarray(decode_data_url(grid).convert("RGB"))], want) < 0.05


def _wait_for(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` (the page's CSP forbids the eval of Playwright's wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.02)
