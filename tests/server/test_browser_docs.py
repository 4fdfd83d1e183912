"""/docs (Swagger UI) and /redoc render in headless Chromium with no network beyond the
service: their scripts and styles come from the app, not a CDN.

No workers: the pages need only the OpenAPI schema, served by an app whose runner is never
started. Needs Chromium and Playwright's Python package (tests/helpers/browser.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from helpers.browser import launch, serve, sync_playwright

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    from gridgen import DistributedRunner
    from gridgen.server import create_app
    from gridgen.testing import ProbeWorker

    sync_playwright()  # skip before serving when the browser cannot run
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    yield from serve(create_app(runner, manage_runner=False, title="offline docs"))


@pytest.fixture(scope="module")
def offline_page(url: str) -> Iterator[Any]:
    """A page whose every request off the service is refused, and recorded."""
    with sync_playwright()() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.outside = []

        def only_the_service(route: Any) -> None:
            if route.request.url.startswith(url):
                route.continue_()
            else:
                page.outside.append((route.request.resource_type, route.request.url))
                route.abort()

        page.route("**/*", only_the_service)
        try:
            yield page
        finally:
            browser.close()


def test_swagger_ui_renders_every_route_offline(url: str, offline_page: Any) -> None:
    page = offline_page
    page.goto(f"{url}docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = set(page.locator(".opblock-summary-path").all_inner_texts())
    assert {"/generate", "/stream", "/health", "/ready"} <= {p.strip() for p in paths}, paths
    assert "offline docs" in page.inner_text(".info .title")
    assert page.outside == []


def test_redoc_renders_offline(url: str, offline_page: Any) -> None:
    page = offline_page
    page.goto(f"{url}redoc")
    page.wait_for_selector("text=/generate", timeout=30_000)
    assert "offline docs" in page.inner_text("h1")
    # Only ReDoc's "powered by" logo is asked of its CDN (refused here; the page does without).
    assert [kind for kind, _ in page.outside] in ([], ["image"]), page.outside
