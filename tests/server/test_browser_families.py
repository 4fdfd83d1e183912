"""The playground in headless Chromium shows only the fields the served family accepts
(FLUX.1-dev: no negative prompt; FLUX.1-schnell: no guidance either; SD3.5: both).

No workers: the page is served by an app whose runner is never started. Needs Chromium and
Playwright's Python package (tests/helpers/browser.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from helpers.browser import launch, serve, sync_playwright

pytestmark = pytest.mark.browser


def _serve(request_model: Any) -> Iterator[str]:
    from gridgen import DistributedRunner
    from gridgen.server import create_app
    from gridgen.testing import ProbeWorker

    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    yield from serve(create_app(runner, request_model=request_model, manage_runner=False, title="families"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_playwright()() as playwright:
        chromium = launch(playwright)
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
