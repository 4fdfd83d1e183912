"""``GET /loras``: the LoRA adapters a service may apply (``docs/lora.md``), for clients and
the playground's picker. Added by :func:`~gridgen.server.create_app` when the request model
has a ``loras`` field."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from ..diffusion.lora import MAX_LORA_SCALE, MAX_LORAS_PER_REQUEST, LoraSources
from ..runner import DistributedRunner

__all__ = ["LorasResponse", "add_lora_route"]


class LorasResponse(BaseModel):
    loras: list[str]
    """The registered adapter names, sorted (a ``lora_dir`` is listed again when it changes)."""
    max_per_request: int = MAX_LORAS_PER_REQUEST
    min_scale: float = -MAX_LORA_SCALE
    max_scale: float = MAX_LORA_SCALE


def add_lora_route(app: FastAPI, runner: DistributedRunner[Any], request_model: type[BaseModel]) -> None:
    """``GET /loras`` for ``runner``'s adapter sources (its ``setup_kwargs``)."""
    if "loras" not in request_model.model_fields:
        return

    @app.get("/loras", response_model=LorasResponse, summary="The LoRA adapters requests may name")
    async def loras() -> LorasResponse:
        try:
            names = LoraSources.from_setup(runner.setup_kwargs).names()
        except (ValueError, OSError):  # bad sources: setup fails and says why; nothing to offer
            names = []
        return LorasResponse(loras=names)
