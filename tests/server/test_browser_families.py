"""The playground in headless Chromium shows only the fields the served family accepts
(FLUX.1-dev: no negative prompt; FLUX.1-schnell: no guidance either; SD3.5: both).

No workers: the page is served by an app whose runner is never started. Needs Chromium and
Playwright's Python package, as tests/test_browser.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_browser import CHROMIUM, CHROMIUM_ARGS, _sync_playwright

pytestmark = pytest.mark.browser


def _serve(request_model: Any) -> Iterator[str]:
    import uvicorn

    from gridgen import DistributedRunner
    from gridgen.server import create_app
    from gridgen.testing import ProbeWorker

    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    app = create_app(runner, request_model=request_model, manage_runner=False, title="families")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with _sync_playwright()() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize(
    ("family", "negative", "guidance"),
    [("FluxDevRequest", False, True), ("FluxSchnellRequest", False, False), ("SD3Request", True, True)],
)
def test_the_form_shows_only_the_family_fields(browser: Any, family: str, negative: bool, guidance: bool) -> None:
    import gridgen.diffusion as diffusion

    for url in _serve(getattr(diffusion, family)):
        page = browser.new_page()
        try:
            page.goto(url)
            assert page.is_visible("[name=negative_prompt]") is negative
            assert page.is_visible("[name=guidance_scale]") is guidance
            assert page.is_visible("[name=num_inference_steps]") and page.is_visible("[name=prompt]")
            assert page.input_value("[name=width]") == "1024"
            assert page.get_attribute("[name=width]", "step") == "16"  # the family's rule
            steps = "4" if family == "FluxSchnellRequest" else "28"
            assert page.input_value("[name=num_inference_steps]") == steps
        finally:
            page.close()
