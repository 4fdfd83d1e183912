"""``create_app``: a FastAPI service in front of a :class:`~gridgen.DistributedRunner`.

Endpoints
---------

``POST /generate``
    Body: the request model (default :class:`~gridgen.sdxl.GenerateRequest`). Runs the
    request and answers with the response model (default
    :class:`~gridgen.sdxl.GenerateResult`: ``grid`` and ``images`` as base64 ``data:`` URLs,
    ``seeds``, ``timings``...). If the client disconnects first, the request is cancelled
    on every rank.
``POST /stream``
    Same body; a ``text/event-stream`` of ``queued``, ``progress``... then ``result``
    (or ``error``) events, described in :mod:`gridgen.server.sse`. Closing the connection
    cancels the request on every rank, within one diffusion step for the SDXL worker.
``GET /health``
    ``200 {"status": "ok"}`` while the process serves HTTP, from the moment it listens:
    the app starts its runner in the background, so this answers while workers start.
``GET /ready``
    ``200 {"ready": true, ...}`` when the runner takes requests, else ``503`` with its
    ``state`` (``new``, ``starting``, ``restarting``, ``dead``, ``stopping``, ``stopped``,
    or ``failed`` with an ``error`` when the app could not start it).
``GET /loras``
    The LoRA adapters requests may name, when the request model has ``loras``
    (:mod:`gridgen.server.loras`, ``docs/lora.md``).
``GET /``
    The playground page (plain HTML and JavaScript shipped in the package).
``GET /docs``, ``GET /redoc``
    The OpenAPI schema in Swagger UI and ReDoc, their scripts served by the app itself
    (from the ``fastapi-offline`` package), so they render without internet.

Errors
------

Every gridgen error becomes a JSON body ``{"detail": message, "error": {"type",
"message", "status", ...}}`` (on ``/stream`` after the response started: an ``error``
event whose data is the inner object):

=============================================  ======  =========================================
error                                          status  notes
=============================================  ======  =========================================
body fails the request model                   422     FastAPI's body: ``detail[*].loc`` names
                                                       the field, ``detail[*].type`` the rule;
                                                       echoed ``input`` cut to 200 characters
body larger than ``max_body_bytes``            413     ``PayloadTooLarge``, before it is parsed
``QueueFull``                                  503     ``Retry-After``: about one request's time
``RunnerClosed`` / ``RequestCancelled``        503     not started, stopping or restarting;
                                                       ``Retry-After`` too
``WorkerError`` (a rank raised)                500     ``rank``, ``remote_type``; the remote
                                                       traceback goes to the log, not the client
``InvalidRequestError`` (host or a rank)       422     a field broke a rule
``WorkerDiedError``                            500     ``rank``, ``exitcode``, ``signal``
``RequestTimeout``                             504
``PayloadTooLarge``                            413
=============================================  ======  =========================================

The service keeps serving after any of them: a rank that raised leaves its group
healthy or rebuilt by the runner (see :mod:`gridgen.runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.sse import EventSourceResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from .._json import to_jsonable
from ..images import keep_encoded
from ..runner import DistributedRunner
from ..sdxl import GenerateRequest, GenerateResult
from .auth import ApiKeyAuth
from .disconnect import CLIENT_CLOSED_REQUEST, result_unless_disconnected
from .errors import DEFAULT_MAX_BODY_BYTES, Pace, add_error_handling, error_body, traced_error_body
from .loras import add_lora_route
from .openai import mount_openai
from .request_ids import RequestIds, current_request_id
from .sse import event_stream, request_events

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "error_body"]

logger = logging.getLogger("gridgen.server")

_DEFAULT = object()
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # in /generate's and /stream's OpenAPI
    500: {"description": "A worker failed (WorkerError, WorkerDiedError)"},
    503: {"description": "Queue full, or the runner is not ready (Retry-After set)"},
    504: {"description": "The request's time limit passed"},
}
_PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'"
)


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    state: str
    world_size: int
    queue_size: int
    max_queue: int
    error: str | None = None


def _field_limits(schema: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("type", "default", "minimum", "maximum", "multipleOf", "maxLength", "enum", "description")
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        entry = {k: prop[k] for k in keys if k in prop}
        for alternative in prop.get("anyOf", []):  # Optional[int] and friends
            for k in keys:
                if k in alternative and k not in entry and alternative.get("type") != "null":
                    entry[k] = alternative[k]
        out[name] = entry
    return out


def _playground(title: str, config: Mapping[str, Any]) -> str:
    page = resources.files("gridgen.server").joinpath("playground.html").read_text("utf-8")
    # JSON inside <script>: "<" escaped so no "</script>" can end it early.
    data = json.dumps(config, separators=(",", ":")).replace("<", "\\u003c")
    return page.replace("__GRIDGEN_TITLE__", html.escape(title)).replace("__GRIDGEN_CONFIG__", data)


def create_app(
    runner: DistributedRunner[Any],
    *,
    request_model: type[BaseModel] = GenerateRequest,
    response_model: Any = _DEFAULT,
    title: str = "gridgen",
    manage_runner: bool = True,
    stream_ping: float = 15.0,
    on_start_failed: Callable[[BaseException], None] | None = None,
    max_body_bytes: int | None = DEFAULT_MAX_BODY_BYTES,
    api_keys: Sequence[str] = (),
    openai_api: bool | None = None,
    model_id: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``runner`` (endpoints and errors: see the module docstring).

    Args:
        runner: the runner to serve, new or already started. With ``manage_runner`` the
            app's lifespan starts it in the background if it is new (the server listens at
            once; ``/ready`` says 503 until the workers are ready) and stops it at shutdown;
            run the app in the same event loop as the runner.
        request_model: the pydantic model of the ``/generate`` and ``/stream`` body; the
            runner gets ``model_dump(mode="json")`` as its payload.
        response_model: the model of the result: one with a ``from_worker(result)``
            classmethod (as :class:`~gridgen.sdxl.GenerateResult`) or validated from
            ``to_jsonable(result)``; ``None`` answers ``to_jsonable(result)`` as is.
            Default: ``GenerateResult`` for ``GenerateRequest`` (and subclasses), else ``None``.
        title: the OpenAPI title and the playground heading.
        manage_runner: start and stop the runner in the app's lifespan.
        stream_ping: seconds between SSE keep-alive comments on ``/stream`` (0: none).
        on_start_failed: called with the error if starting the runner in the background
            fails (the error is also logged and ``/ready`` reports ``failed``).
        max_body_bytes: larger request bodies get a 413 before they are read in full
            (default :data:`DEFAULT_MAX_BODY_BYTES`, 32 MiB; ``None``: no limit).
        api_keys: when given, every route but ``/health``, ``/ready`` and the playground
            page needs ``Authorization: Bearer KEY`` with one of them (:mod:`gridgen.server.auth`).
        openai_api: serve the OpenAI-compatible ``/v1`` routes (:mod:`gridgen.server.openai`);
            ``None``: when the runner's worker is a diffusion family's.
        model_id: the model id ``/v1/models`` lists and ``model`` must name (default: the
            runner's ``setup_kwargs["model"]``, else the worker's default model).
    """
    if response_model is _DEFAULT:
        is_sdxl = isinstance(request_model, type) and issubclass(request_model, GenerateRequest)
        response_model = GenerateResult if is_sdxl else None
    pace = Pace()
    start_error: list[BaseException] = []
    app = FastAPIOffline(  # FastAPI, with /docs and /redoc's assets served locally, not from a CDN
        title=title,
        version=_version(),
        description="Image generation on a group of worker processes, one per GPU, driven by gridgen.",
        lifespan=_lifespan(runner, manage_runner, on_start_failed, start_error),
    )
    app.state.runner = runner
    page = _playground(
        title,
        {
            "title": title,
            "world_size": runner.world_size,
            "fields": _field_limits(request_model.model_json_schema()),
            "auth": bool(api_keys),
        },
    )
    add_error_handling(app, pace, max_body_bytes)
    convert_result = _result_converter(response_model)
    _add_generate_route(app, runner, request_model, response_model, convert_result, pace)
    _add_stream_route(app, runner, request_model, convert_result, pace, stream_ping)
    _add_status_routes(app, runner, pace, start_error)
    _add_playground_route(app, page)
    add_lora_route(app, runner, request_model)
    mount_openai(app, runner, pace, enabled=openai_api, model_id=model_id, stream_ping=stream_ping)
    if api_keys:
        app.add_middleware(ApiKeyAuth, keys=list(api_keys))  # before the body is read
    _add_operations(app, runner)  # outermost: a 401 has a request id and is counted too
    return app


def _add_operations(app: FastAPI, runner: DistributedRunner[Any]) -> None:
    """``GET /metrics`` (with ``prometheus-client`` installed) and request ids, around every route."""
    try:
        from .metrics import add_metrics
    except ImportError as exc:  # the server extra without prometheus-client (an older install)
        logger.warning("no /metrics: %s (pip install prometheus-client)", exc)
    else:
        add_metrics(app, runner)
    app.add_middleware(RequestIds)  # outermost: error bodies, metrics and logs see the id


def _lifespan(
    runner: DistributedRunner[Any],
    manage_runner: bool,
    on_start_failed: Callable[[BaseException], None] | None,
    start_error: list[BaseException],
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: start ``runner`` in the background, stop it at shutdown.

    A failed start is logged, appended to ``start_error`` (``/ready`` reports it) and
    passed to ``on_start_failed``.
    """

    async def start_runner() -> None:
        try:
            await runner.start()
        except Exception as exc:
            logger.error("the workers failed to start: %s", exc)
            start_error.append(exc)
            if on_start_failed is not None:
                on_start_failed(exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # In the background: the server listens (and /health answers) while workers start.
        starting = asyncio.ensure_future(start_runner()) if manage_runner and runner.state == "new" else None
        try:
            yield
        finally:
            if starting is not None and not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            if manage_runner:
                await runner.stop()

    return lifespan


def _add_generate_route(
    app: FastAPI,
    runner: DistributedRunner[Any],
    request_model: type[BaseModel],
    response_model: Any,
    convert_result: Callable[[Any], Any],
    pace: Pace,
) -> None:
    """``POST /generate``: run a ``request_model`` body, answer with the result."""

    async def generate(request: Request, body: BaseModel) -> Response:
        handle = runner.submit(body.model_dump(mode="json"), trace_id=current_request_id())
        arrived = time.perf_counter()
        try:
            finished, result = await result_unless_disconnected(request, handle)
        except BaseException:
            pace.record(arrived, time.perf_counter(), ok=False)
            raise
        pace.record(arrived, time.perf_counter(), ok=finished)
        if not finished:
            logger.info("request %d: client disconnected; cancelled", handle.id)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return JSONResponse(convert_result(result))

    # The body's type is chosen at runtime: FastAPI reads it from the annotation.
    generate.__annotations__["body"] = request_model
    app.post(
        "/generate",
        response_model=response_model,
        responses=_ERROR_RESPONSES,
        summary="Generate and return the result",
    )(generate)


def _add_stream_route(
    app: FastAPI,
    runner: DistributedRunner[Any],
    request_model: type[BaseModel],
    convert_result: Callable[[Any], Any],
    pace: Pace,
    stream_ping: float,
) -> None:
    """``POST /stream``: run a ``request_model`` body, its events as server-sent events."""

    async def stream(request: Request, body: BaseModel) -> Response:
        handle = runner.submit(body.model_dump(mode="json"), streaming=True, trace_id=current_request_id())
        arrived = time.perf_counter()
        position = handle.position  # now: by the time the first event goes out it may be running

        def on_finish(ok: bool) -> None:
            pace.record(arrived, time.perf_counter(), ok)

        events = request_events(
            handle,
            position=position,
            convert_result=convert_result,
            error_body=traced_error_body,
            idle_timeout=runner.stream_idle_timeout,
            on_finish=on_finish,
        )
        return EventSourceResponse(
            event_stream(events, stream_ping),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # as fastapi.sse's own
        )

    stream.__annotations__["body"] = request_model  # as generate's
    app.post(
        "/stream",
        # Not response_class=EventSourceResponse: FastAPI would take the endpoint for a generator.
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "queued, progress..., result | error"},
            **_ERROR_RESPONSES,
        },
        summary="Generate, streaming progress and previews as server-sent events",
    )(stream)


def _add_status_routes(
    app: FastAPI, runner: DistributedRunner[Any], pace: Pace, start_error: list[BaseException]
) -> None:
    """``GET /health`` (the process serves HTTP) and ``GET /ready`` (the runner takes requests)."""

    @app.get("/health", response_model=HealthResponse, summary="The process is alive")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok")

    # Uptime checkers ask with HEAD; the server sends the GET answer's headers, no body.
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready; `state` says why"}},
        summary="The runner takes requests",
    )
    async def ready() -> JSONResponse:
        failed = bool(start_error) and runner.state == "new"
        body = ReadyResponse(
            ready=runner.ready,
            state="failed" if failed else runner.state,
            world_size=runner.world_size,
            queue_size=runner.queue_size,
            max_queue=runner.max_queue,
            error=str(start_error[0]).split("\n", 1)[0] if failed else None,
        )
        headers = None if runner.ready else {"Retry-After": str(pace.retry_after())}
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=200 if runner.ready else 503, headers=headers
        )


def _add_playground_route(app: FastAPI, page: str) -> None:
    """``GET /``: the playground ``page``, kept out of the OpenAPI schema."""

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(
            page, headers={"Content-Security-Policy": _PLAYGROUND_CSP, "Cache-Control": "no-cache"}
        )


def _result_converter(response_model: Any) -> Callable[[Any], Any]:
    if response_model is None:
        return to_jsonable
    from_worker = getattr(response_model, "from_worker", None)
    if callable(from_worker):

        def convert(result: Any) -> Any:
            if isinstance(result, dict):
                result = {key: keep_encoded(value) for key, value in result.items()}
            return from_worker(result).model_dump(mode="json")

        return convert

    def validate(result: Any) -> Any:
        return response_model.model_validate(to_jsonable(result)).model_dump(mode="json")

    return validate


def _version() -> str:
    from .. import __version__

    return __version__
