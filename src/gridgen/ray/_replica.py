"""One Ray Serve replica: a ``DistributedRunner`` over the replica's GPUs behind ``create_app``."""

from __future__ import annotations

import asyncio
import copyreg
import importlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridgen.errors import StartupError, StartupTimeout, WorkerDiedError, WorkerError
from gridgen.runner import DistributedRunner
from gridgen.server import create_app
from gridgen.worker import DistributedWorker

from ._metrics import ReplicaMetrics

__all__ = ["REPLICA_HEADER", "AnyPayload", "GridgenReplica", "ReplicaSpec"]

logger = logging.getLogger("gridgen.ray")

REPLICA_HEADER = "x-gridgen-replica"
"""The response header naming the replica that answered (its Ray Serve replica id)."""

# States in which the runner will not serve again by itself: Ray should replace the replica.
_BROKEN_STATES = ("dead", "stopped", "stopping")


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica of a gridgen deployment builds (picklable: Ray ships it to replicas).

    ``worker_cls``, ``request_model``, ``response_model`` and ``prepare`` travel by reference
    (module and name), so they must be importable on every node.
    """

    worker_cls: type[DistributedWorker]
    setup_kwargs: Mapping[str, Any] = field(default_factory=dict)
    runner_options: Mapping[str, Any] = field(default_factory=dict)
    max_queue: int = 8
    gpus: int = 0
    cpu_ranks: int = 1
    app_options: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[[], Any] | str | None = None


class AnyPayload(BaseModel):
    """Any JSON object: the request model of workers that bring none (fields pass through)."""

    model_config = ConfigDict(extra="allow")


def resolve(target: Any) -> Any:
    """``"package.module:name"`` (or ``"package.module.name"``) to the object; others unchanged."""
    if not isinstance(target, str):
        return target
    module_name, sep, attribute = target.partition(":")
    if not sep:
        module_name, _, attribute = target.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{target!r} is not an import path like 'package.module:name'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


class _ReplicaHeader:
    """ASGI wrapper adding ``x-gridgen-replica`` to every HTTP response, errors included.

    It wraps the whole FastAPI app (outside Starlette's error middleware), so that even a
    500 from an unexpected exception names its replica.
    """

    def __init__(self, app: Any, replica: str) -> None:
        self.app = app
        self.replica = replica

    def add_exception_handler(self, *args: Any, **kwargs: Any) -> None:
        # Ray Serve registers its own 503 handlers on the ingress app when it has this method.
        self.app.add_exception_handler(*args, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REPLICA_HEADER, self.replica)
            await send(message)

        await self.app(scope, receive, send_named)


class GridgenReplica:
    """A Ray Serve replica owning one :class:`~gridgen.DistributedRunner`.

    HTTP: the app of :func:`gridgen.server.create_app` (``/generate``, ``/stream``,
    ``/health``, ``/ready``, the playground), each response naming the replica in
    ``x-gridgen-replica``. Python (a ``DeploymentHandle``): :meth:`invoke`, :meth:`stream`
    (with ``handle.options(stream=True)``) and :meth:`status`.

    Devices: with ``spec.gpus`` > 0 one rank per GPU Ray assigned to this replica (Ray sets
    ``CUDA_VISIBLE_DEVICES``, so the ranks use ``cuda:0..gpus-1``); otherwise
    ``spec.cpu_ranks`` CPU ranks with gloo.
    """

    async def __init__(self, spec: ReplicaSpec) -> None:  # type: ignore[misc]  # Ray awaits it
        self.spec = spec
        context = serve.get_replica_context()
        self.replica = context.replica_tag
        if spec.gpus > 0:
            visible = len(ray.get_gpu_ids())
            if visible != spec.gpus:
                raise RuntimeError(f"this replica asked Ray for {spec.gpus} GPU(s) but was given {visible}")
            device, world_size = "cuda", spec.gpus
        else:
            device, world_size = "cpu", spec.cpu_ranks
        options = {"auto_restart": True, **spec.runner_options}
        # Ray lets max_queue + 1 requests in (max_ongoing_requests). It counts a request gone
        # once its response is sent, a moment before the runner moves the next one from its
        # queue to the ranks; a request arriving in that moment would find the queue full.
        # One spare slot absorbs the hand-off, so Ray's limit is always the one that binds.
        self.runner: DistributedRunner[Any] = DistributedRunner(
            spec.worker_cls,
            world_size,
            device=device,
            setup_kwargs=spec.setup_kwargs,
            max_queue=spec.max_queue + 1,
            **options,
        )
        request_model = spec.app_options.get("request_model")
        self._request_model: type[BaseModel] | None = resolve(request_model)
        if spec.prepare is not None:
            # In a thread: building a model can take a while, and the replica's loop serves Ray.
            await asyncio.to_thread(resolve(spec.prepare))
        self._metrics = ReplicaMetrics(self.runner)
        logger.info("replica %s: starting %d rank(s) on %s", self.replica, world_size, device)
        await self.runner.start()
        self._metrics.refresh()

    def __serve_build_asgi_app__(self) -> ASGIApp:
        options = dict(self.spec.app_options)
        for key in ("request_model", "response_model"):
            if key in options:
                options[key] = resolve(options[key])
        app = create_app(self.runner, **options)  # its lifespan stops the runner at shutdown
        return _ReplicaHeader(app, self.replica)

    def check_health(self) -> None:
        """Ray's health check: fails once the runner cannot serve again (a dead group with
        ``auto_restart`` off, a failed restart, a stopped runner), so Ray replaces the replica.
        A runner that is restarting passes: it serves again once ``setup`` is done, and
        ``/ready`` says 503 meanwhile."""
        self._metrics.refresh()  # Ray calls this every few seconds: the gauges' clock
        state = self.runner.state
        if state in _BROKEN_STATES:
            raise RuntimeError(f"gridgen replica {self.replica}: the runner is {state} and will not serve again")

    def _payload(self, payload: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """The payload the HTTP endpoints would pass: validated by the request model, if any."""
        if self._request_model is None:
            if isinstance(payload, BaseModel):
                return payload.model_dump(mode="json")
            return dict(payload)
        try:
            if isinstance(payload, BaseModel):
                payload = payload.model_dump(mode="json")
            model = self._request_model.model_validate(payload)
        except ValidationError as exc:
            # pydantic's error is not picklable; its text names each field and rule.
            raise ValueError(str(exc)) from None
        return model.model_dump(mode="json")

    async def invoke(self, payload: Mapping[str, Any] | BaseModel, timeout: float | None = None) -> Any:
        """Run one request and return rank 0's result (as ``DistributedRunner.invoke``).

        Cancelling the call (``response.cancel()``) cancels the request on every rank.
        """
        return await self.runner.invoke(self._payload(payload), timeout=timeout)

    async def stream(
        self,
        payload: Mapping[str, Any] | BaseModel,
        as_text_events: bool = False,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Yield each streamed item, then the result (as ``DistributedRunner.stream``).

        Call through ``handle.options(stream=True).stream.remote(payload)``. Leaving early
        cancels the request on every rank.
        """
        events = self.runner.stream(
            self._payload(payload), as_text_events=as_text_events, timeout=timeout, idle_timeout=idle_timeout
        )
        try:
            async for item in events:
                yield item
        finally:
            await events.aclose()

    def status(self) -> dict[str, Any]:
        """This replica and its runner: ``replica``, ``actor_name``, ``node_id``, ``state``,
        ``ready``, ``world_size``, ``devices``, ``queue_size``, ``max_queue`` (the
        deployment's), ``max_ongoing`` (what Ray lets in: ``max_queue + 1``), ``pids``."""
        runner = self.runner
        context = ray.get_runtime_context()
        return {
            "replica": self.replica,
            "actor_name": context.get_actor_name(),
            "node_id": context.get_node_id(),
            "state": runner.state,
            "ready": runner.ready,
            "world_size": runner.world_size,
            "devices": list(runner.devices),
            "queue_size": runner.queue_size,
            "max_queue": self.spec.max_queue,
            "max_ongoing": self.spec.max_queue + 1,
            "pids": list(runner.pids),
        }


# -- errors across Ray -----------------------------------------------------------------
# Ray pickles an exception raised in a replica to hand it to the caller. These classes take
# keyword-only or extra constructor arguments, which plain exception pickling loses, so they
# get reducers here (the process that unpickles imports this module by itself).


def _rebuild_worker_error(cls: type[WorkerError], message: str, state: dict[str, Any]) -> WorkerError:
    return cls(message, **state)


def _reduce_worker_error(exc: WorkerError) -> tuple[Any, ...]:
    state = {
        "rank": exc.rank,
        "remote_type": exc.remote_type,
        "remote_message": exc.remote_message,
        "remote_traceback": exc.remote_traceback,
    }
    return _rebuild_worker_error, (type(exc), exc.args[0] if exc.args else "", state)


def _rebuild_worker_died(rank: int, exitcode: int | None, message: str) -> WorkerDiedError:
    error = WorkerDiedError(rank, exitcode)
    error.args = (message,)
    return error


def _reduce_worker_died(exc: WorkerDiedError) -> tuple[Any, ...]:
    return _rebuild_worker_died, (exc.rank, exc.exitcode, exc.args[0] if exc.args else "")


for _cls in (WorkerError, StartupError, StartupTimeout):
    copyreg.pickle(_cls, _reduce_worker_error)
copyreg.pickle(WorkerDiedError, _reduce_worker_died)
