"""``application()``: a gridgen deployment with its sizing, backpressure and autoscaling settled."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve import Application

from gridgen.worker import DistributedWorker

from ._replica import GridgenReplica, ReplicaSpec, resolve

__all__ = ["DEFAULT_AUTOSCALING", "application", "build_app"]

DEFAULT_AUTOSCALING: dict[str, Any] = {
    "target_ongoing_requests": 2.0,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 300.0,
}
"""Autoscaling defaults (any key of Ray Serve's ``autoscaling_config`` overrides them).

A replica runs one request at a time, so its ongoing requests are one running plus its
queue: ``target_ongoing_requests=2`` adds replicas once about one request waits per replica
(``1`` when ``max_queue`` is 0). A new replica loads its model before serving, so scaling
up waits only 10 s of sustained load; scaling down waits 5 minutes, because a replica
given back costs a model load to get again.
"""

ROUTER = "gridgen.ray._routing:LeastBusyRouter"

# Options the deployment derives itself, so that they cannot disagree with the runner.
_DERIVED = {
    "world_size": "set by gpus= (one rank per GPU) or cpu_ranks=",
    "device": "set by gpus= (cuda) or cpu_ranks= (cpu)",
    "devices": "Ray picks the GPUs of each replica: use gpus=",
    "max_queue": "pass max_queue= to application()",
}
_DERIVED_RAY = {
    "max_ongoing_requests": "it is max_queue + 1 (one running request plus the runner's queue)",
    "num_replicas": "pass num_replicas= or autoscaling= to application()",
    "autoscaling_config": "pass autoscaling= to application()",
    "max_queued_requests": "pass max_queued_requests= to application()",
}


def _check_options(runner_options: Mapping[str, Any], deployment_options: Mapping[str, Any]) -> None:
    for key, why in _DERIVED.items():
        if key in runner_options:
            raise ValueError(f"runner_options[{key!r}]: not allowed here: {why}")
    for key, why in _DERIVED_RAY.items():
        if key in deployment_options:
            raise ValueError(f"deployment_options[{key!r}]: not allowed here: {why}")


def _autoscaling(autoscaling: tuple[int, int] | Mapping[str, Any], max_queue: int) -> dict[str, Any]:
    config = dict(DEFAULT_AUTOSCALING)
    if max_queue == 0:
        config["target_ongoing_requests"] = 1.0
    if isinstance(autoscaling, Mapping):
        config.update(autoscaling)
    else:
        low, high = autoscaling
        config.update(min_replicas=low, max_replicas=high)
    low, high = config.get("min_replicas", 1), config.get("max_replicas", 1)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        raise ValueError(f"autoscaling: need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {low}, {high}")
    config.setdefault("min_replicas", low)
    config.setdefault("max_replicas", high)
    return config


def _scale_and_backpressure(
    max_queue: int,
    num_replicas: int | None,
    autoscaling: tuple[int, int] | Mapping[str, Any] | None,
    max_queued_requests: int | None,
    retry_after: float,
) -> dict[str, Any]:
    """Ray Serve's replica count (or autoscaling) and its backpressure settings."""
    if autoscaling is not None and num_replicas is not None:
        raise ValueError("num_replicas and autoscaling: give one, not both")
    if num_replicas is not None and (not isinstance(num_replicas, int) or num_replicas < 1):
        raise ValueError(f"num_replicas: must be a whole number >= 1, got {num_replicas!r}")
    if retry_after < 0:
        raise ValueError(f"retry_after: must be >= 0 seconds, got {retry_after}")
    scaling = None if autoscaling is None else _autoscaling(autoscaling, max_queue)
    most_replicas = scaling["max_replicas"] if scaling is not None else (num_replicas or 1)
    # Ray counts a request as queued at its caller until a replica takes it, so a burst of
    # arrivals is all "queued" at once: the default holds one burst the size of the cluster.
    queued = (max_queue + 1) * most_replicas if max_queued_requests is None else max_queued_requests
    if queued != -1 and queued < 1:
        raise ValueError(f"max_queued_requests: must be -1 (no limit) or >= 1, got {queued}")
    options: dict[str, Any] = {
        "max_ongoing_requests": max_queue + 1,
        "max_queued_requests": queued,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after},
    }
    if scaling is not None:
        options["autoscaling_config"] = scaling
    else:
        options["num_replicas"] = num_replicas or 1
    return options


# Over 60 lines for its 40-line docstring (the deployment's reference); the body only checks and assembles.
def application(
    worker_cls: type[DistributedWorker] | str,
    *,
    setup_kwargs: Mapping[str, Any] | None = None,
    runner_options: Mapping[str, Any] | None = None,
    gpus: int = 0,
    cpu_ranks: int = 1,
    num_cpus: float | None = None,
    max_queue: int = 8,
    num_replicas: int | None = None,
    autoscaling: tuple[int, int] | Mapping[str, Any] | None = None,
    max_queued_requests: int | None = None,
    retry_after: float = 1.0,
    request_model: type[Any] | str | None = None,
    response_model: Any = None,
    title: str = "gridgen",
    stream_ping: float = 15.0,
    prepare: Callable[[], Any] | str | None = None,
    name: str = "gridgen",
    deployment_options: Mapping[str, Any] | None = None,
    api_keys: Sequence[str] = (),
) -> Application:
    """A Ray Serve application: replicas each owning one ``DistributedRunner`` of ``worker_cls``.

    Run it with ``serve.run(app, name=..., route_prefix="/")``; it serves the HTTP API of
    :func:`gridgen.server.create_app` and, to a ``DeploymentHandle``, ``invoke``, ``stream``
    and ``status`` (see :class:`GridgenReplica`).

    Args:
        worker_cls: the worker class, or its import path (``"gridgen.sdxl:SDXLWorker"``);
            importable on every node.
        setup_kwargs: keyword arguments of ``setup`` on every rank.
        runner_options: other :class:`~gridgen.DistributedRunner` options (``auto_restart``
            defaults to True here; ``world_size``, ``device``, ``devices`` and ``max_queue``
            are set by the deployment).
        gpus: GPUs per replica, one rank each; 0 for CPU ranks.
        cpu_ranks: CPU ranks per replica when ``gpus`` is 0.
        num_cpus: CPUs Ray reserves per replica (default: ``cpu_ranks`` on CPU, 1 with GPUs).
        max_queue: the runner's queue. A replica takes ``max_queue + 1`` requests at a time
            (Ray Serve's ``max_ongoing_requests``): one running and ``max_queue`` waiting.
        num_replicas: a fixed number of replicas (default 1 unless ``autoscaling`` is given).
        autoscaling: ``(min_replicas, max_replicas)``, or a Ray Serve ``autoscaling_config``
            dict, on top of :data:`DEFAULT_AUTOSCALING`.
        max_queued_requests: requests each caller (the HTTP proxy of each node, each handle)
            holds until a replica has room; past it the proxy answers 503 with
            ``Retry-After`` (a handle raises ``BackPressureError``). Default: what the
            replicas hold, ``(max_queue + 1) * replicas`` (``max_replicas`` when autoscaling).
        retry_after: seconds the 503 of a full cluster asks clients to wait.
        request_model, response_model, title, stream_ping: as in ``create_app`` (models may
            be import paths); ``request_model`` defaults to the SDXL request for the SDXL
            worker and to none (any JSON object) for other workers.
        prepare: a callable (or import path) run once in each replica before its runner starts,
            e.g. ``"gridgen.sdxl:ensure_tiny_sdxl"`` to build the tiny model on that node.
        name: the deployment's name.
        deployment_options: other Ray Serve deployment options (``ray_actor_options``,
            ``health_check_period_s``, ``graceful_shutdown_timeout_s``...). The default
            ``request_router_config`` routes each request to the less busy of two replicas
            from the whole cluster (:class:`~gridgen.ray._routing.LeastBusyRouter`), not
            the proxy's own node first.
        api_keys: as in ``create_app``: every route but ``/health``, ``/ready`` and the
            playground page then needs ``Authorization: Bearer KEY``.
    """
    worker = resolve(worker_cls)
    if not (isinstance(worker, type) and issubclass(worker, DistributedWorker)):
        raise TypeError(f"worker_cls must be a DistributedWorker subclass, got {worker!r}")
    runner_options = dict(runner_options or {})
    options = dict(deployment_options or {})
    _check_options(runner_options, options)
    for label, value, least in (("gpus", gpus, 0), ("cpu_ranks", cpu_ranks, 1), ("max_queue", max_queue, 0)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{label}: must be a whole number >= {least}, got {value!r}")
    actor = dict(options.pop("ray_actor_options", {}))
    if gpus:
        actor.setdefault("num_gpus", gpus)
    actor.setdefault("num_cpus", num_cpus if num_cpus is not None else (1 if gpus else cpu_ranks))
    options.setdefault("request_router_config", {"request_router_class": ROUTER})
    options.setdefault("graceful_shutdown_timeout_s", 30.0)  # as gridgen serve's --drain-timeout
    options.update(ray_actor_options=actor)
    options.update(_scale_and_backpressure(max_queue, num_replicas, autoscaling, max_queued_requests, retry_after))

    spec = ReplicaSpec(
        worker_cls=worker,
        setup_kwargs=dict(setup_kwargs or {}),
        runner_options=runner_options,
        max_queue=max_queue,
        gpus=gpus,
        cpu_ranks=cpu_ranks,
        app_options={
            **_app_options(worker, request_model, response_model, title, stream_ping),
            **({"api_keys": list(api_keys)} if api_keys else {}),
        },
        prepare=prepare,
    )
    deployment = serve.deployment(name=name, **options)(serve.ingress()(GridgenReplica))
    return deployment.bind(spec)


def _app_options(
    worker: type[DistributedWorker],
    request_model: type[Any] | str | None,
    response_model: Any,
    title: str,
    stream_ping: float,
) -> dict[str, Any]:
    """``create_app``'s options in each replica; the request model defaults by worker family."""
    app_options: dict[str, Any] = {"title": title, "stream_ping": stream_ping}
    if request_model is None:
        family = getattr(worker, "family", None)  # a diffusion worker: its family's own model
        model = getattr(family, "request_model", None)
        request_model = f"{model.__module__}:{model.__qualname__}" if model else "gridgen.ray:AnyPayload"
    app_options["request_model"] = request_model
    if response_model is not None:
        app_options["response_model"] = response_model
    return app_options


def build_app(args: Mapping[str, Any]) -> Application:
    """Application builder for Ray Serve config files and KubeRay's ``RayService``
    (``import_path: gridgen.ray:build_app``): ``args`` are :func:`application`'s keyword
    arguments, plus ``worker`` (an import path; default ``"gridgen.sdxl:SDXLWorker"``).

    ``serve run gridgen.ray:build_app model=tiny cpu_ranks=1`` also works: ``model`` is short
    for ``setup_kwargs={"model": ...}``; numbers given as text are converted.
    """
    options = dict(args)
    worker = options.pop("worker", "gridgen.sdxl:SDXLWorker")
    model = options.pop("model", None)
    if model is not None:
        options["setup_kwargs"] = {**dict(options.get("setup_kwargs") or {}), "model": model}
        if model == "tiny" and "prepare" not in options:
            options["prepare"] = "gridgen.sdxl:ensure_tiny_sdxl"
    for key in ("gpus", "cpu_ranks", "max_queue", "num_replicas", "max_queued_requests"):
        if isinstance(options.get(key), str):
            options[key] = int(options[key])
    for key in ("num_cpus", "retry_after", "stream_ping"):
        if isinstance(options.get(key), str):
            options[key] = float(options[key])
    if isinstance(options.get("autoscaling"), list):
        low, high = options["autoscaling"]
        options["autoscaling"] = (int(low), int(high))
    return application(worker, **options)
