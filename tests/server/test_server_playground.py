"""GET / serves the playground: one self-contained page, shipped in the package."""

from __future__ import annotations

import json
import re
from importlib import resources

from fastapi.testclient import TestClient

from gridgen import DistributedRunner
from gridgen.sdxl import GenerateRequest
from gridgen.server import create_app
from gridgen.testing import ProbeWorker


def _page(title: str = "gridgen") -> tuple[str, dict[str, str]]:
    app = create_app(DistributedRunner(ProbeWorker, world_size=2, device="cpu"), title=title)
    client = TestClient(app)  # no `with`: no lifespan, the runner is never started
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    return response.text, dict(response.headers)


def test_page_has_the_form_the_stream_reader_and_cancel() -> None:
    page, _ = _page()
    for name in ("prompt", "negative_prompt", "num_images", "num_inference_steps", "width", "height", "seed"):
        assert f'name="{name}"' in page, name
    assert 'id="cancel"' in page and "controller.abort()" in page
    # POST bodies cannot use EventSource: fetch + ReadableStream, aborted by the cancel button
    assert 'fetch("stream"' in page and "getReader()" in page and "AbortController" in page
    assert "EventSource(" not in page
    for event in ("queued", "progress", "result", "error"):
        assert f'event === "{event}"' in page
    assert "preview_image" in page and "seeds" in page and "timings" in page


def test_page_loads_nothing_from_the_network() -> None:
    page, headers = _page()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "img-src data:" in csp


def test_page_config_comes_from_the_request_model() -> None:
    page, _ = _page(title="<My> & service")
    match = re.search(r'<script id="gridgen-config" type="application/json">(.*?)</script>', page, re.S)
    assert match is not None
    config = json.loads(match.group(1))
    assert config["title"] == "<My> & service"
    assert config["world_size"] == 2
    fields = config["fields"]
    defaults = GenerateRequest.model_fields
    assert fields["width"]["default"] == defaults["width"].default
    assert fields["num_inference_steps"]["default"] == defaults["num_inference_steps"].default
    assert (fields["width"]["minimum"], fields["width"]["maximum"], fields["width"]["multipleOf"]) == (64, 2048, 8)
    assert fields["num_images"]["maximum"] == 64  # from Optional[int]'s non-null branch
    assert "<title>&lt;My&gt; &amp; service playground</title>" in page
    assert "<My>" not in page  # escaped in the HTML, \u003c-escaped in the JSON


def test_page_is_package_data() -> None:
    text = resources.files("gridgen.server").joinpath("playground.html").read_text("utf-8")
    assert "__GRIDGEN_CONFIG__" in text
