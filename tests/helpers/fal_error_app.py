"""A FastAPI app in the seed's shape: ``StreamingResponse(runner.stream(..., as_text_events=True))``.

Its worker streams progress and then fails part-way (the failing rank is picked by the
request). A module of its own so that a uvicorn server can import it by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gridgen import DistributedRunner

from helpers.fal_workers import CompatWorker


class StreamRequest(BaseModel):
    op: str = "items_then_raise"
    items: int = 3
    on_rank: int | None = 1
    message: str = "out of memory at step 4"


def create_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = DistributedRunner(worker_cls=CompatWorker, world_size=2, device="cpu", error_grace=2.0)
        await runner.start()
        app.state.runner = runner
        yield
        await runner.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/stream")
    async def stream(request: StreamRequest) -> StreamingResponse:
        return StreamingResponse(
            app.state.runner.stream(request.model_dump(), as_text_events=True),
            media_type="text/event-stream",
        )

    @app.post("/")
    async def run(request: StreamRequest) -> Any:
        return await app.state.runner.invoke({"op": "value", "value": request.message})

    return app
