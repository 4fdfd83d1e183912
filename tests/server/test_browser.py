"""The playground in headless Chromium: submit a prompt, see previews then the final grid; cancel.

Needs Chromium and Playwright's Python package (the browser download is not needed; see
tests/helpers/browser.py):

    apt-get install -y chromium
    pip install playwright

Set GRIDGEN_SAVE_SCREENSHOT=1 to also copy the screenshot to docs/assets/playground.png.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.browser import launch, sync_playwright

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]

# Records every image the page shows (its badge: "preview · step N" or "final grid"), so a
# preview that is replaced within milliseconds is still seen.
WATCH_STAGE = """() => {
  window.__shown = [];
  const stage = document.getElementById("stage");
  new MutationObserver(() => {
    const badge = stage.querySelector(".badge");
    if (badge && window.__shown[window.__shown.length - 1] !== badge.textContent) {
      window.__shown.push(badge.textContent);
    }
  }).observe(stage, { subtree: true, childList: true, characterData: true, attributes: true });
}"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The playground's service on 127.0.0.1 (a free port): SDXL tiny on two CPU ranks."""
    sync_playwright()  # skip before starting workers when the browser cannot run
    import uvicorn

    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker, ensure_tiny_sdxl
    from gridgen.server import create_app

    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("GRIDGEN_CACHE", str(tmp_path_factory.mktemp("gridgen-browser-cache")))
    ensure_tiny_sdxl()
    runner = DistributedRunner(SDXLWorker, world_size=2, device="cpu", setup_kwargs={"model": "tiny"})
    config = uvicorn.Config(create_app(runner, title="gridgen · tiny"), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 150
    while not server.started:
        assert thread.is_alive(), "the server exited during startup"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    while not runner.ready:  # the app starts its runner in the background
        assert runner.state in ("new", "starting"), runner.state
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/", runner
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        patch.undo()


@pytest.fixture(scope="module")
def browser(service: tuple[str, Any]) -> Iterator[Any]:
    with sync_playwright()() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


def _wait_for(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll ``expression`` with page.evaluate: the page's CSP forbids the eval that
    Playwright's wait_for_function needs."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.02)


def _fill(page: Any, **fields: Any) -> None:
    for name, value in fields.items():
        page.fill(f"[name={name}]", str(value))


def test_submit_shows_previews_then_the_final_grid(
    service: tuple[str, Any], browser: Any, tmp_path: Path
) -> None:
    url, _ = service
    page = browser.new_page(viewport={"width": 1180, "height": 760})
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else external.append(r.url))
    page.goto(url)
    page.wait_for_selector("#service.ready")
    assert "2 worker(s)" in page.inner_text("#service")
    # the form starts from the request model's defaults
    assert page.input_value("[name=width]") == "1024"
    assert page.input_value("[name=num_inference_steps]") == "20"

    page.evaluate(WATCH_STAGE)
    page.fill("[name=prompt]", "a lighthouse at dawn")
    _fill(page, num_images=4, num_inference_steps=12, width=192, height=192, seed=1234, preview_every=1)
    page.click("#generate")
    page.wait_for_selector('#stage img[data-kind="final grid"]', timeout=60_000)

    shown = page.evaluate("window.__shown")
    previews = [s for s in shown if s.startswith("preview")]
    assert previews, shown
    assert shown[-1] == "final grid"
    assert page.inner_text("#status-text").startswith("Done: 4 image(s), 192\u00d7192")
    assert page.eval_on_selector("#stage img", "img => [img.naturalWidth, img.naturalHeight]") == [384, 384]
    assert page.locator("#seeds button").all_inner_texts() == ["1234", "1235", "1236", "1237"]
    timings = page.locator("#timings td:first-child").all_inner_texts()
    assert {"denoise", "decode", "total"} <= set(timings)
    assert page.inner_text("#error") == ""
    assert external == []  # nothing loaded from outside the service

    screenshot = tmp_path / "playground.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("GRIDGEN_SAVE_SCREENSHOT") == "1":
        target = REPO / "docs" / "assets" / "playground.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
    page.close()


def test_cancel_button_stops_the_request_on_the_workers(service: tuple[str, Any], browser: Any) -> None:
    url, runner = service
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#service.ready")
    page.evaluate(WATCH_STAGE)
    page.fill("[name=prompt]", "a long one")
    # some 12 s of work on two CPU ranks if it ran to the end
    _fill(page, num_images=2, num_inference_steps=40, width=512, height=512, preview_every=1)
    page.click("#generate")
    _wait_for(page, "() => window.__shown.some(s => s.startsWith('preview'))")
    page.click("#cancel")
    _wait_for(page, "() => document.getElementById('status-text').textContent.startsWith('Cancelled')")
    cancelled_at = time.monotonic()

    # the workers are free again at once: a small request completes promptly
    _fill(page, num_images=2, num_inference_steps=2, width=64, height=64)
    page.click("#generate")
    page.wait_for_selector('#stage img[data-kind="final grid"]', timeout=30_000)
    assert time.monotonic() - cancelled_at < 5.0
    assert page.inner_text("#status-text").startswith("Done: 2 image(s), 64\u00d764")
    assert runner.queue_size == 0
    page.close()


def test_placeholders_fit_and_read_as_hints_and_setup_time_shows_once(
    service: tuple[str, Any], browser: Any
) -> None:
    url, _ = service
    page = browser.new_page(viewport={"width": 1180, "height": 760})
    page.goto(url)
    page.wait_for_selector("#service.ready")
    images = page.locator("[name=num_images]")
    assert images.get_attribute("placeholder") == "auto: 2"
    assert "one image per worker" in (images.get_attribute("title") or "")
    # The placeholder text fits its field (it was cut off at "one per worker (2").
    fits = page.evaluate(
        """() => { const el = document.querySelector('[name=num_images]');
        const style = getComputedStyle(el);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = style.font;
        const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        return ctx.measureText(el.placeholder).width <= room; }"""
    )
    assert fits
    assert page.get_attribute("[name=negative_prompt]", "placeholder").startswith("optional")
    assert page.input_value("[name=negative_prompt]") == ""
    rows = []
    for seed in (5, 6, 7):
        page.fill("[name=prompt]", "a small one")
        _fill(page, num_images=2, num_inference_steps=2, width=64, height=64, seed=seed, preview_every=0)
        page.click("#generate")
        _wait_for(page, f"() => document.querySelector('#seeds button')?.textContent === '{seed}'")
        rows.append(page.locator("#timings td:first-child").all_inner_texts())
    # Setup time shows with the first result after the workers started, at most.
    assert all("setup" not in names and "denoise" in names for names in rows[1:]), rows
    page.close()
