"""The OpenAI Images API on a gridgen service: what the official ``openai`` SDKs, LiteLLM,
Open WebUI and other clients with a configurable base URL speak.

Routes (mounted by :func:`gridgen.server.create_app` for the diffusion workers)::

    POST /v1/images/generations   JSON body            -> {"created", "data": [...], ...}
    POST /v1/images/edits         multipart (or JSON)  -> the same; image-to-image, inpainting
    GET  /v1/models               the served model     -> {"object": "list", "data": [...]}
    GET  /v1/models/{model}
    GET  /v1/images/files/{name}  an image handed out with response_format="url"

Each request becomes the worker family's own request (:mod:`gridgen.server.openai_params`)
and goes through ``runner.submit`` like a ``/generate`` body: validated on the host before
it is queued, merged with compatible queued requests, cancelled on every rank when the
client goes away. ``stream=true`` answers server-sent events in OpenAI's image-stream
shapes: ``partial_images`` (0 to 3) ``image_generation.partial_image`` events from
gridgen's previews, then one ``image_generation.completed`` per image (``image_edit.*`` on
the edits route). Errors: :mod:`gridgen.server.openai_errors`. The parameter table is in
``docs/openai.md``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from PIL import Image

from .._requests import StreamResult
from ..images import EncodedImage, encode_image, image_bytes
from ..inputs import ImageInputError, decode_image_input, input_data_url, mask_from_alpha
from ..runner import DistributedRunner
from .disconnect import CLIENT_CLOSED_REQUEST, result_unless_disconnected
from .errors import Pace
from .image_store import ImageStore
from .openai_errors import OpenAIError, openai_error_body, openai_error_response
from .openai_params import (
    EditParams,
    GenerationParams,
    ImageParams,
    auto_size_of,
    parse_params,
    to_payload,
)
from .request_ids import current_request_id
from .sse import event_stream

__all__ = ["OpenAIRoutes", "add_openai_routes", "mount_openai"]

logger = logging.getLogger("gridgen.server")

_FORM_LIMITS = {"max_files": 4, "max_fields": 64, "max_part_size": 64 * 1024}


@dataclass
class OpenAIRoutes:
    """What the routes share: the runner, the served model and its defaults, the URL store."""

    runner: DistributedRunner[Any]
    model_id: str
    default_size: tuple[int, int]
    default_steps: int
    pace: Pace
    store: ImageStore
    stream_ping: float
    created: int

    # -- models -------------------------------------------------------------------------

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gridgen"}

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise OpenAIError(
                404, f"The model '{model}' does not exist; this server serves '{self.model_id}'",
                param="model", code="model_not_found",
            )

    # -- one request ---------------------------------------------------------------------

    async def run(self, request: Request, params: ImageParams, payload: dict[str, Any], kind: str) -> Response:
        """Submit ``payload``; the JSON answer, or the event stream with ``stream=true``."""
        if params.stream:
            return self._stream(params, payload, kind)
        handle = self.runner.submit(payload, trace_id=current_request_id())
        arrived = time.perf_counter()
        try:
            finished, result = await result_unless_disconnected(request, handle)
        except BaseException:
            self.pace.record(arrived, time.perf_counter(), ok=False)
            raise
        self.pace.record(arrived, time.perf_counter(), ok=finished)
        if not finished:
            logger.info("request %d: client disconnected; cancelled", handle.id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        images = await asyncio.to_thread(self._outputs, params, result)
        data: list[dict[str, Any]] = []
        for image in images:
            if (params.response_format or "b64_json") == "url":
                name = self.store.add(image)
                data.append({"url": str(request.url_for("openai_image_file", name=name))})
            else:
                data.append({"b64_json": base64.b64encode(image.data).decode("ascii")})
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": data,
                "background": "opaque",
                "output_format": params.output_format or "png",
                "size": f"{result['width']}x{result['height']}",
            }
        )

    @staticmethod
    def _outputs(params: ImageParams, result: dict[str, Any]) -> list[EncodedImage]:
        """The result's images in the requested format (re-encoded here only when
        ``output_compression`` asks for a quality the worker does not use)."""
        images = [image_bytes(image) for image in result["images"]]
        return [_in_format(image, params) for image in images]

    def _stream(self, params: ImageParams, payload: dict[str, Any], kind: str) -> Response:
        handle = self.runner.submit(payload, streaming=True, trace_id=current_request_id())
        arrived = time.perf_counter()

        def on_finish(ok: bool) -> None:
            self.pace.record(arrived, time.perf_counter(), ok)

        events = _image_events(handle, params, kind, self.runner.stream_idle_timeout, on_finish)
        return EventSourceResponse(
            event_stream(events, self.stream_ping),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _in_format(image: EncodedImage, params: ImageParams) -> EncodedImage:
    fmt = params.output_format or "png"
    quality = None if params.output_compression is None or fmt == "png" else max(1, params.output_compression)
    if image.format == fmt and quality is None:
        return image
    with Image.open(io.BytesIO(image.data)) as opened:
        return encode_image(opened, fmt, quality=quality if fmt != "png" else None)


def worker_format(params: ImageParams) -> str:
    """The format the worker encodes in: the requested one, or PNG when ``output_compression``
    asks for a JPEG or WebP quality (the host then encodes once from lossless pixels)."""
    fmt = params.output_format or "png"
    return "png" if params.output_compression is not None and fmt != "png" else fmt


async def _image_events(
    handle: Any, params: ImageParams, kind: str, idle_timeout: float | None, on_finish: Callable[[bool], None]
) -> AsyncGenerator[ServerSentEvent, None]:
    """OpenAI's image-stream events for one submitted request; an ``error`` event on failure."""
    wanted = params.partial_images or 0
    sent = 0
    ok = False
    common = {
        "background": "opaque",
        "output_format": params.output_format or "png",
        "quality": "auto",
    }
    try:
        try:
            async for event in handle.updates(idle_timeout=idle_timeout):
                if isinstance(event, StreamResult):
                    result = event.value
                    size = f"{result['width']}x{result['height']}"
                    images = await asyncio.to_thread(OpenAIRoutes._outputs, params, result)
                    for image in images:
                        yield _event(f"{kind}.completed", {
                            "b64_json": base64.b64encode(image.data).decode("ascii"),
                            "created_at": int(time.time()), "size": size, **common,
                        })
                    ok = True
                    continue
                item = event.value
                preview = item.get("preview_image") if isinstance(item, dict) else None
                if preview is None or sent >= wanted or item.get("step", 0) >= item.get("total_steps", 0):
                    continue
                partial = _in_format(image_bytes(preview), params)
                yield _event(f"{kind}.partial_image", {
                    "b64_json": base64.b64encode(partial.data).decode("ascii"),
                    "created_at": int(time.time()), "partial_image_index": sent,
                    "size": f"{preview.width}x{preview.height}", **common,
                })
                sent += 1
        except Exception as exc:
            status, body = openai_error_body(exc)
            if status >= 500 and status != 503:
                logger.error("stream of request %d failed: %s", handle.id, exc)
            yield ServerSentEvent(event="error", raw_data=json.dumps(body))
    finally:
        if not handle.done():
            logger.info("request %d: the stream ended early (client gone?); cancelling", handle.id)
            handle.cancel()
        on_finish(ok)


def _event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=name, raw_data=json.dumps({"type": name, **data}, separators=(",", ":")))


# -- the routes -----------------------------------------------------------------------------


def mount_openai(
    app: FastAPI,
    runner: DistributedRunner[Any],
    pace: Pace,
    *,
    enabled: bool | None = None,
    model_id: str | None = None,
    stream_ping: float = 15.0,
    store: ImageStore | None = None,
) -> OpenAIRoutes | None:
    """Mount the ``/v1`` routes when ``enabled`` (``None``: when the runner's worker class
    has a diffusion ``family``, whose request model gives the defaults)."""
    family = getattr(runner.worker_cls, "family", None)
    request_model = getattr(family, "request_model", None)
    if enabled is False or (enabled is None and request_model is None):
        return None
    if request_model is None:
        raise ValueError("openai_api=True needs a diffusion worker (its class has a family)")
    fields = request_model.model_fields
    if model_id is None:
        model_id = str(runner.setup_kwargs.get("model") or getattr(runner.worker_cls, "default_model", "gridgen"))
    routes = OpenAIRoutes(
        runner=runner,
        model_id=model_id,
        default_size=(int(fields["width"].default), int(fields["height"].default)),
        default_steps=int(fields["num_inference_steps"].default),
        pace=pace,
        store=store or ImageStore(),
        stream_ping=stream_ping,
        created=int(time.time()),
    )
    add_openai_routes(app, routes)
    return routes


Handler = Callable[[Request], Awaitable[Response]]


def _answering_errors(routes: OpenAIRoutes) -> Callable[[Handler], Handler]:
    """Every exception of a handler as an OpenAI error response."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return openai_error_response(exc, routes.pace.retry_after())

        return wrapped

    return wrap


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raise OpenAIError(400, "The body is not valid JSON", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise OpenAIError(400, "The body must be a JSON object", code="invalid_json")
    return raw


def add_openai_routes(app: FastAPI, routes: OpenAIRoutes) -> None:
    """Mount the ``/v1`` routes (see the module docstring) on ``app``."""
    answering = _answering_errors(routes)

    @answering
    async def generations(request: Request) -> Response:
        params = parse_params(await _json_object(request), GenerationParams)
        routes.check_model(params.model)
        payload = to_payload(params, default_size=routes.default_size, default_steps=routes.default_steps,
                             worker_format=worker_format(params))
        return await routes.run(request, params, payload, "image_generation")

    @answering
    async def edits(request: Request) -> Response:
        fields, image, mask = await _edit_inputs(request)
        params = parse_params(fields, EditParams)
        routes.check_model(params.model)
        start = _decode("image", image)
        size = auto_size_of(start.size) if params.size in (None, "auto") else routes.default_size
        mask_url = None
        if mask is not None:
            mask_image = _decode("mask", mask)
            if mask_image.size != start.size:
                raise OpenAIError(
                    400, f"The mask is {mask_image.width}x{mask_image.height} pixels but the image is "
                    f"{start.width}x{start.height}: they must be the same size",
                    param="mask", code="mask_size",
                )
            mask_url = input_data_url(mask_from_alpha(mask_image))
        payload = to_payload(params, default_size=size, default_steps=routes.default_steps,
                             worker_format=worker_format(params), image=_as_data_url(image, start),
                             mask=mask_url)
        return await routes.run(request, params, payload, "image_edit")

    @answering
    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [routes.model_card()]})

    @answering
    async def get_model(request: Request) -> Response:
        routes.check_model(request.path_params["model"])
        return JSONResponse(routes.model_card())

    @answering
    async def image_file(request: Request) -> Response:
        image = routes.store.get(request.path_params["name"])
        if image is None:
            raise OpenAIError(404, "No such image: it expired or never existed", code="image_not_found")
        return Response(image.data, media_type=image.mime_type, headers={"Cache-Control": "private, max-age=3600"})

    tags: list[str | Enum] = ["OpenAI-compatible"]
    app.add_api_route("/v1/images/generations", generations, methods=["POST"], tags=tags,
                      summary="OpenAI: create images")
    app.add_api_route("/v1/images/edits", edits, methods=["POST"], tags=tags,
                      summary="OpenAI: edit an image (img2img, inpainting)")
    app.add_api_route("/v1/models", list_models, methods=["GET"], tags=tags, summary="OpenAI: the served model")
    app.add_api_route("/v1/models/{model:path}", get_model, methods=["GET"], tags=tags, summary="OpenAI: one model")
    app.add_api_route("/v1/images/files/{name}", image_file, methods=["GET"], tags=tags, name="openai_image_file",
                      summary="An image handed out with response_format=url")


async def _edit_inputs(request: Request) -> tuple[dict[str, Any], bytes | str, bytes | str | None]:
    """The form fields (or JSON members) of an edit, and its image and mask, still encoded."""
    content_type = request.headers.get("content-type", "")
    images: list[Any]
    if content_type.startswith("application/json"):
        fields = await _json_object(request)
        image_field = fields.pop("image", None)
        images = image_field if isinstance(image_field, list) else [] if image_field is None else [image_field]
        mask: Any = fields.pop("mask", None)
    elif content_type.startswith("multipart/form-data"):
        form = await request.form(**_FORM_LIMITS)
        images = [*form.getlist("image"), *form.getlist("image[]")]
        mask = form.get("mask")
        fields = {k: v for k, v in form.multi_items() if k not in ("image", "image[]", "mask")}
        images = [await item.read() if hasattr(item, "read") else item for item in images]
        if mask is not None and hasattr(mask, "read"):
            mask = await mask.read()
    else:
        raise OpenAIError(400, "Send the edit as multipart/form-data (or JSON)", code="invalid_content_type")
    if not images:
        raise OpenAIError(400, "Missing required parameter: 'image'.", param="image", code="missing")
    if len(images) > 1:
        raise OpenAIError(
            400, f"One image per edit here ({len(images)} sent); use n for several results",
            param="image", code="too_many_images",
        )
    return fields, images[0], mask


def _decode(param: str, value: Any) -> Image.Image:
    if not isinstance(value, str | bytes):
        raise OpenAIError(400, f"'{param}' must be an image file", param=param, code="invalid_image")
    try:
        return decode_image_input(value)
    except ImageInputError as exc:
        raise OpenAIError(400, f"{param}: {exc}", param=param, code=exc.rule) from None


def _as_data_url(value: str | bytes, decoded: Image.Image) -> str:
    """The image as the request sends it on: its own bytes (a data URL), not re-encoded."""
    if isinstance(value, str) and value.startswith("data:"):
        return value
    if isinstance(value, str):
        value = base64.b64decode(value)
    fmt = str(decoded.format or "png").lower()
    return f"data:image/{fmt};base64,{base64.b64encode(value).decode('ascii')}"
