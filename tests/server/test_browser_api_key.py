"""The playground in headless Chromium with an API key: the page asks for the key once
(kept in sessionStorage), a wrong key is a clear error and is forgotten, the right one
gives a result and survives a reload; an uploaded start image with a strength gives an
image-to-image result (issue 22).

Needs Chromium and Playwright's Python package (see tests/helpers/browser.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers.browser import launch, sync_playwright
from helpers.server import LiveServer

pytestmark = pytest.mark.browser

KEY = "browser-key-22"


@pytest.fixture(scope="module")
def service(tiny_cache: str) -> Iterator[LiveServer]:
    sync_playwright()  # skip before starting workers when the browser cannot run
    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker
    from gridgen.server import create_app

    runner = DistributedRunner(SDXLWorker, world_size=2, device="cpu", setup_kwargs={"model": "tiny"})
    with LiveServer(create_app(runner, title="gridgen · keys", api_keys=[KEY]), runner) as live:
        yield live


@pytest.fixture(scope="module")
def browser(service: LiveServer) -> Iterator[Any]:
    with sync_playwright()() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


def test_the_page_asks_for_the_key_once(service: LiveServer, browser: Any) -> None:
    page = browser.new_page()
    page.goto(service.url + "/")
    page.wait_for_selector("#service.ready")  # /ready needs no key
    assert page.is_visible("#api_key")
    page.fill("[name=prompt]", "an orange field")
    for name, value in {"num_images": 2, "num_inference_steps": 4, "width": 64, "height": 64, "seed": 5}.items():
        page.fill(f"[name={name}]", str(value))
    page.click("#generate")  # no key yet: the page asks for it, nothing is sent
    assert "needs an API key" in page.inner_text("#error")

    page.fill("#api_key", "wrong")
    page.dispatch_event("#api_key", "change")
    page.click("#generate")
    page.wait_for_selector("#error:has-text('401')")
    assert page.evaluate("sessionStorage.getItem('gridgen-api-key')") is None  # a wrong key is forgotten

    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    page.click("#generate")
    page.wait_for_selector('#stage img[data-kind="final grid"]', timeout=60_000)
    assert page.inner_text("#status-text").startswith("Done: 2 image(s), 64\u00d764")
    assert page.inner_text("#error") == ""
    assert page.evaluate("sessionStorage.getItem('gridgen-api-key')") == KEY

    page.reload()  # the key is kept for the tab's session: not asked again
    page.wait_for_selector("#service.ready")
    assert page.input_value("#api_key") == KEY
    page.close()


def test_upload_a_start_image_with_a_strength(service: LiveServer, browser: Any, tmp_path: Path) -> None:
    start = tmp_path / "start.png"
    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), (250, 120, 20)).save(buffer, "PNG")  # resized to 64x64 by the worker
    start.write_bytes(buffer.getvalue())
    page = browser.new_page()
    page.goto(service.url + "/")
    page.wait_for_selector("#service.ready")
    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    page.fill("[name=prompt]", "an orange field")
    for name, value in {"num_images": 2, "num_inference_steps": 4, "width": 64, "height": 64, "seed": 5}.items():
        page.fill(f"[name={name}]", str(value))

    def final_grid() -> str:
        page.click("#generate")  # the status leaves "Done" at once, and comes back with the result
        page.wait_for_selector("#status-text:has-text('Done')", timeout=60_000)
        assert page.inner_text("#error") == ""
        assert page.inner_text("#status-text").startswith("Done: 2 image(s), 64\u00d764")
        return str(page.get_attribute('#stage img[data-kind="final grid"]', "src"))

    page.set_input_files("[name=image]", str(start))
    page.fill("[name=strength]", "0.5")
    edited = final_grid()
    page.set_input_files("[name=image]", [])
    page.fill("[name=strength]", "")
    assert final_grid() != edited, "the upload made no difference"
    page.close()
