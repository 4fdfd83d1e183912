"""The OpenAI routes' server-side errors as the ``openai`` SDK's exception classes: a full
queue (429 RateLimitError, Retry-After), a worker that raised (500 InternalServerError, also
as an ``error`` event mid-stream), a runner that is not ready (503, Retry-After).

One in-process server over a tiny SDXL worker that fails or holds on request
(``helpers.openai_workers``), queue of one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers.server import LiveServer

openai = pytest.importorskip("openai")

SMALL: dict[str, Any] = {"num_inference_steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def server(tiny_cache: str) -> Iterator[LiveServer]:
    from gridgen import DistributedRunner
    from gridgen.server import create_app

    from helpers.openai_workers import FlakySDXLWorker

    runner = DistributedRunner(
        FlakySDXLWorker, world_size=2, device="cpu", setup_kwargs={"model": "tiny"},
        max_queue=1, cancel_grace=20.0,
    )
    with LiveServer(create_app(runner, title="openai errors"), runner) as live:
        yield live


def _client(server: LiveServer) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_worker_error_is_an_internal_server_error_and_the_service_goes_on(server: LiveServer) -> None:
    client = _client(server)
    with pytest.raises(openai.InternalServerError) as caught:
        client.images.generate(prompt="raise", size="64x64", extra_body=SMALL)
    assert caught.value.status_code == 500
    assert caught.value.body["type"] == "server_error"
    assert "failed on purpose" in caught.value.body["message"]
    assert "Traceback" not in caught.value.body["message"]  # the remote traceback stays in the log
    assert len(client.images.generate(prompt="fine", size="64x64", extra_body=SMALL).data) == 1


def test_a_worker_error_mid_stream_is_an_error_event(server: LiveServer) -> None:
    stream = _client(server).images.generate(
        prompt="raise", size="64x64", stream=True, partial_images=1, extra_body=SMALL
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert "failed on purpose" in str(caught.value)


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(server: LiveServer) -> None:
    client = _client(server)
    runner = server.runner
    holder = httpx.Client(base_url=server.url, timeout=60)
    with holder.stream("POST", "/v1/images/generations", json={
        "prompt": "hold", "size": "64x64", "stream": True, **SMALL,
    }) as held:
        assert held.status_code == 200
        _wait_for(lambda: runner.queue_size == 0 and runner._dispatcher.current is not None)  # running
        queued = threading.Thread(target=lambda: _quietly(client, "queued"))
        queued.start()
        _wait_for(lambda: runner.queue_size == 1)
        with pytest.raises(openai.RateLimitError) as caught:
            client.images.generate(prompt="one too many", size="64x64", extra_body=SMALL)
        assert caught.value.code == "queue_full"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    holder.close()  # closing the stream cancels the hold on every rank
    queued.join(timeout=60)
    assert not queued.is_alive()


def test_a_runner_that_is_not_started_is_503_with_retry_after(tiny_cache: str) -> None:
    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker
    from gridgen.server import create_app

    app = create_app(
        DistributedRunner(SDXLWorker, world_size=1, device="cpu", setup_kwargs={"model": "tiny"}),
        manage_runner=False,
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test/v1") as http:
            client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", max_retries=0, http_client=http)
            with pytest.raises(openai.InternalServerError) as caught:
                await client.images.generate(prompt="x", size="64x64")
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"] == "1"
            assert caught.value.body["type"] == "service_unavailable_error"

    asyncio.run(scenario())


def _quietly(client: Any, prompt: str) -> None:
    client.images.generate(prompt=prompt, size="64x64", extra_body=SMALL)


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
