"""``gridgen serve``: the HTTP service on this machine (``--ray``: :mod:`gridgen.cli._ray`)."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
from typing import Any

from .._preflight import (
    batch_options,
    check_device,
    check_model,
    check_serve_options,
    is_loopback,
    listen,
    worker_options,
)
from .._worker_logging import LOG_FORMAT_ENV
from ._common import (
    api_keys,
    default_model,
    describe,
    model_family,
    quiet_workers,
    url_host,
    worker_class,
)

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.ray is not None or args.replicas is not None:
        from ._ray import serve_on_ray

        return serve_on_ray(args)
    check_serve_options(args)
    keys = api_keys(args)
    model = args.model or default_model()
    family = model_family(model)
    options = worker_options(args, family)
    check_device(args)
    check_model(args.model)
    listener = listen(args.host, args.port)  # before any worker: a busy port fails at once
    quiet_workers(args.verbose)
    import uvicorn

    from ..runner import DistributedRunner
    from ..sdxl import GenerateResult
    from ..server import create_app
    from ..server.drain import DrainingServer
    from ..server.logs import announce, logging_config

    log_config = logging_config(args.log_level, args.log_format)
    if args.log_format == "json":
        os.environ[LOG_FORMAT_ENV] = "json"  # the workers' lines too
    logging.config.dictConfig(log_config)
    worker_cls = worker_class(model)
    if not is_loopback(args.host) and not keys:
        announce(f"gridgen: warning: listening on {args.host} without an API key: anyone who reaches it "
                 "can use it (--api-key or $GRIDGEN_API_KEY)", args.log_format)
    runner = DistributedRunner(
        worker_cls,
        world_size=args.workers,
        device=args.device,
        setup_kwargs={"model": model, **options},
        max_queue=args.max_queue,
        **batch_options(args),
        auto_restart=True,  # a worker that died is respawned; the service keeps serving
    )
    server: Any = None
    failures: list[BaseException] = []

    def start_failed(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(
        runner, request_model=family.request_model, response_model=GenerateResult,
        title=f"gridgen · {model}", on_start_failed=start_failed, api_keys=keys, model_id=model,
    )
    port = listener.getsockname()[1]
    announce(
        f"gridgen: listening on http://{url_host(args.host)}:{port}/ (GET /ready: 503 until the "
        f"workers are ready); starting {runner.world_size} worker(s) on {describe(runner.devices)} "
        f"with model {model!r}",
        args.log_format,
    )
    config = uvicorn.Config(app, log_level=args.log_level, log_config=log_config)
    server = DrainingServer(config, runner, args.drain_timeout, args.log_format)
    server.run(sockets=[listener])
    if failures:
        raise failures[0]
    if server.forced:
        announce("gridgen: stopped at once (second signal)", args.log_format)
        return 130
    if server.drained:
        announce("gridgen: drained and stopped", args.log_format)
    return 0
