"""``gridgen serve --ray ADDRESS``: deploy the SDXL service onto a Ray cluster until Ctrl-C."""

from __future__ import annotations

import argparse
import functools
import logging
import re
import signal
import socket
import time
from typing import Any

from ._common import QUIET_ENV, api_keys, default_model, err, model_family, url_host

__all__ = ["APP_NAME", "parse_replicas", "serve_on_ray"]

APP_NAME = "gridgen"
"""The Ray Serve application name ``gridgen serve --ray`` deploys under."""

_RANGE = re.compile(r"^\s*(\d+)\s*[-:]\s*(\d+)\s*$")


def parse_replicas(text: str | None) -> tuple[int | None, tuple[int, int] | None]:
    """``"2"`` -> ``(2, None)``; ``"1-4"`` (or ``"1:4"``) -> ``(None, (1, 4))``; None -> ``(1, None)``."""
    from .._preflight import UsageError

    if text is None:
        return 1, None
    match = _RANGE.match(text)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if high < 1 or low > high:
            raise UsageError(f"--replicas: need MIN <= MAX and MAX >= 1 in MIN-MAX, got {text!r}")
        return None, (low, high)
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--replicas: must be N or MIN-MAX (e.g. 2 or 1-4), got {text!r}") from None
    if count < 1:
        raise UsageError(f"--replicas: must be at least 1, got {count}")
    return count, None


def _check_args(args: argparse.Namespace) -> tuple[int | None, tuple[int, int] | None, dict[str, Any]]:
    """(replicas, autoscaling bounds, the workers' setup options), each checked."""
    from .._preflight import UsageError, check_model, check_serve_options, worker_options

    if args.ray is None:
        raise UsageError("--replicas needs --ray ADDRESS (a Ray cluster to deploy the replicas onto)")
    if args.port == 0:
        raise UsageError("--port: Ray Serve's proxy needs a fixed port with --ray (0 is not allowed)")
    check_serve_options(args)
    options = worker_options(args, model_family(args.model or default_model()))
    replicas, autoscaling = parse_replicas(args.replicas)
    _check_reachable(args.ray)
    check_model(args.model)  # last: offline, the default hub model is itself an error
    return replicas, autoscaling, options


def _check_reachable(address: str) -> None:
    """Fail fast on a cluster address nothing answers at: Ray itself retries for minutes."""
    from .._preflight import UsageError

    if address in ("auto", "local"):
        return  # Ray finds (or starts) the cluster and says so itself
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray: expected HOST:PORT of the Ray head (or auto), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"--ray: no Ray cluster answers at {address} ({exc})") from None


def _application(args: argparse.Namespace, replicas: Any, autoscaling: Any, options: dict[str, Any]) -> Any:
    import ray

    from .._preflight import batch_options
    from ..ray._deploy import application

    model = args.model or default_model()
    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)  # type: ignore[no-untyped-call]
    device = args.device or ("cuda" if gpus_in_cluster > 0 else "cpu")
    ranks = args.workers or 1
    actor: dict[str, Any] = {}
    if not args.verbose:
        actor["runtime_env"] = {"env_vars": dict(QUIET_ENV)}
    from ..diffusion import ensure_tiny, worker_for

    worker = worker_for(model)  # the model's family, not always SDXL's
    app = application(
        f"{worker.__module__}:{worker.__qualname__}",
        setup_kwargs={"model": model, **options},
        runner_options=batch_options(args),
        gpus=ranks if device == "cuda" else 0,
        cpu_ranks=ranks,
        max_queue=args.max_queue,
        num_replicas=replicas,
        autoscaling=autoscaling,
        title=f"gridgen · {model}",
        prepare=functools.partial(ensure_tiny, model) if model in ("tiny", "tiny-flux", "tiny-sd3") else None,
        # Ray Serve's own drain: a stopping replica gets no new requests and its ongoing
        # ones (running and queued in the runner) this long to finish.
        deployment_options={"ray_actor_options": actor, "graceful_shutdown_timeout_s": args.drain_timeout},
        api_keys=api_keys(args),
    )
    sizing = f"{replicas} replica(s)" if autoscaling is None else f"{autoscaling[0]} to {autoscaling[1]} replicas"
    where = f"{ranks} GPU(s)" if device == "cuda" else f"{ranks} CPU rank(s)"
    return app, f"{sizing} of {where} each, model {model!r}"


def serve_on_ray(args: argparse.Namespace) -> int:
    """Deploy, print the URL once every replica is ready, wait for Ctrl-C, tear down.

    The application is deleted on the way out (Ctrl-C, a failed deployment); Serve itself
    (its controller and proxies) is shut down too when this command started it and no
    other application is left.
    """

    replicas, autoscaling, options = _check_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)  # "connecting...", "started Serve..."
    import ray
    from ray import serve

    # SIGTERM (kill, a process manager) tears down like Ctrl-C; SIGINT is installed anew
    # because a shell starting this in the background hands it down ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address=args.ray, logging_level=logging.WARNING, log_to_driver=args.verbose)
    address = ray.get_runtime_context().gcs_address
    try:
        serve_was_running = bool(serve.status().proxies or serve.status().applications)
        app, described = _application(args, replicas, autoscaling, options)
        serve.start(http_options={"host": args.host, "port": args.port})
        if serve_was_running:
            err("gridgen: Ray Serve already runs on this cluster: its proxies keep their address")
        err(f"gridgen: deploying {described} onto the Ray cluster at {address}...")
        started = time.perf_counter()
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
            url = f"http://{url_host(args.host)}:{args.port}/"
            err(f"gridgen: ready in {time.perf_counter() - started:.1f}s; Ctrl-C stops and removes it")
            print(url, flush=True)
            while True:
                time.sleep(3600)
        finally:
            err(f"gridgen: removing the {APP_NAME!r} application from the cluster...")
            serve.delete(APP_NAME)
            if not serve_was_running and not serve.status().applications:
                serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()  # type: ignore[no-untyped-call]
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt

