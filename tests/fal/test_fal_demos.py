"""The FLUX-LoRA-style preprocessor and trainer (``flux_lora_demo.py``) run unchanged.

Each demo app runs twice, as fal users wrote it (``from gridgen.fal import ...``) and with
only the import line changed to ``from gridgen import ...``, behind a real uvicorn server
with two CPU ranks: setup (``rank_print``, a bf16 broadcast, DDP on gloo), warm-up calls,
the JSON endpoint and the SSE endpoint, each call with a ``"streaming"`` key in its payload.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from datetime import datetime
from types import ModuleType

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from gridgen import WorkerError

from helpers import flux_lora_demo
from helpers.fal import plain_variant, read_sse
from helpers.server import LiveServer

COLORS = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (220, 30, 10), (10, 30, 220)]
EXPECTED_TONES = ["reddish", "greenish", "bluish", "reddish", "bluish"]


def png_data_url(color: tuple[int, int, int], size: int = 20) -> str:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


IMAGES = [png_data_url(c) for c in COLORS]


@pytest.fixture(scope="module", params=["gridgen.fal", "gridgen"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    if request.param == "gridgen.fal":
        return flux_lora_demo
    return plain_variant("flux_lora_demo", tmp_path_factory.mktemp("plain"))


def serve(demo: ModuleType, app: FastAPI) -> LiveServer:
    if demo is not flux_lora_demo:
        # Under gridgen, invoke raises instead of returning {"error": ...}, so the app's
        # `if "error" in result` is never true: a gridgen app maps the exception to a
        # response itself, here as the fal app's HTTPException(500) would have.
        async def worker_error(request: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, WorkerError)
            return JSONResponse({"detail": exc.remote_message}, status_code=500)

        app.add_exception_handler(WorkerError, worker_error)
    return LiveServer(app)


@pytest.fixture(scope="module")
def preprocessor(demo: ModuleType) -> Iterator[LiveServer]:
    with serve(demo, demo.preprocessor_app(world_size=2)) as server:
        yield server


@pytest.fixture(scope="module")
def trainer(demo: ModuleType) -> Iterator[LiveServer]:
    with serve(demo, demo.trainer_app(world_size=2)) as server:
        yield server


def test_the_plain_variant_differs_only_in_its_import_line(tmp_path: pytest.TempPathFactory) -> None:
    module = plain_variant("flux_lora_demo", tmp_path)  # type: ignore[arg-type]
    assert module.DistributedRunner.__module__.startswith("gridgen.")
    assert "gridgen.fal" not in module.DistributedWorker.__module__
    assert flux_lora_demo.DistributedWorker.__module__ == "gridgen.fal"


def test_preprocessor_gathers_every_ranks_captions_and_latents(preprocessor: LiveServer) -> None:
    with preprocessor.client() as client:
        response = client.post("/", json={"image_urls": IMAGES, "trigger_word": "ZXC"})
    assert response.status_code == 200, response.text
    body = response.json()
    # Ranks 0 and 1 each encoded every other image; all_gather_object brought them together, in order.
    assert body["captions"] == [f"a photo of ZXC, {tone}, sample {i}" for i, tone in enumerate(EXPECTED_TONES)]
    assert body["latent_shape"] == [5, 4, 4, 4]


def test_preprocessor_streams_progress_then_the_result(preprocessor: LiveServer) -> None:
    with preprocessor.client() as client:
        response, events = read_sse(client, "/stream", {"image_urls": IMAGES})
    assert response.status_code == 200
    progress, result = events[:-1], events[-1]
    # Rank 0 encodes images 0, 2 and 4 and reports each one.
    assert [e["message"] for e in progress] == ["encoded 1/3", "encoded 2/3", "encoded 3/3"]
    assert all(e["stage"] == "preprocess" for e in progress)
    assert result["num_images"] == 5 and result["ranks"] == 2
    latents = result["latents"]
    assert latents["content_type"] == "application/ndarray"
    assert latents["dtype"] == "float32" and latents["shape"] == [5, 4, 4, 4]
    assert len(base64.b64decode(latents["data"])) == 5 * 4 * 4 * 4 * 4


def test_preprocessor_bad_input_fails_the_request_and_the_app_keeps_serving(preprocessor: LiveServer) -> None:
    with preprocessor.client() as client:
        bad = client.post("/", json={"image_urls": ["http://example.com/x.png"]})
        good = client.post("/", json={"image_urls": IMAGES[:1]})
    assert bad.status_code == 500
    assert bad.json()["detail"] == "image_urls must be data:image/...;base64 URLs, got 'http://example.com/x.png'"
    assert good.status_code == 200 and good.json()["latent_shape"] == [1, 4, 4, 4]


def test_trainer_trains_with_ddp_and_returns_bf16_lora_weights(trainer: LiveServer) -> None:
    with trainer.client() as client:
        response = client.post("/", json={"steps": 6, "learning_rate": 0.1, "seed": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    losses = body["loss_history"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert body["replicas_in_sync"] is True  # DDP averaged the gradients on both ranks
    assert body["lora_dtype"] == "torch.bfloat16" and body["lora_shape"] == [8, 2]
    assert body["saved_to"] == "/tmp/loras/lora-seed3.safetensors"
    assert datetime.fromisoformat(body["finished_at"]).tzinfo is not None


def test_trainer_is_deterministic_for_a_seed(trainer: LiveServer) -> None:
    # Each request continues from the weights the last one left, as a trainer does; with a
    # learning rate of 0 the weights stay, so one seed gives the same batches and losses.
    with trainer.client() as client:
        a = client.post("/", json={"steps": 2, "learning_rate": 0.0, "seed": 9}).json()
        b = client.post("/", json={"steps": 2, "learning_rate": 0.0, "seed": 9}).json()
    assert a["loss_history"] == b["loss_history"]


def test_trainer_streams_sse_progress_events(trainer: LiveServer) -> None:
    with trainer.client() as client:
        response, events = read_sse(client, "/stream", {"steps": 3, "optimizer": "adam"})
    assert response.status_code == 200
    progress, result = events[:-1], events[-1]
    assert [e["step"] for e in progress] == [1, 2, 3]
    assert [e["progress"] for e in progress] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(e["total_steps"] == 3 and isinstance(e["loss"], float) for e in progress)
    assert result["loss_history"] == [e["loss"] for e in progress]
    lora = result["lora_b"]
    assert lora["content_type"] == "application/ndarray"
    assert lora["dtype"] == "bfloat16" and lora["shape"] == [8, 2]
    assert len(base64.b64decode(lora["data"])) == 8 * 2 * 2
    assert result["saved_to"].endswith(".safetensors")
    datetime.fromisoformat(result["finished_at"])


def test_trainer_error_reaches_the_sse_client_as_an_event(trainer: LiveServer, demo: ModuleType) -> None:
    with trainer.client() as client:
        response, events = read_sse(client, "/stream", {"steps": 0})
        after = client.post("/", json={"steps": 1})
    assert response.status_code == 200
    error = events[-1]["error"]
    if demo is flux_lora_demo:  # gridgen.fal: fal's shape, the message only
        assert error == "steps must be >= 1, got 0"
    else:
        assert error["type"] == "ValueError" and error["message"] == "steps must be >= 1, got 0"
        assert error["rank"] in (0, 1)
    assert after.status_code == 200
