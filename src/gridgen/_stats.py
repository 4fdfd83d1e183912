"""The runner's own numbers: requests by outcome, merged-call sizes, latencies, images,
worker restarts and deaths, GPU memory. Plain counters and fixed-bucket histograms,
with no dependency: :mod:`gridgen.metrics` shows them to Prometheus, ``runner.stats()``
returns them as a dict.

The owners report here (the runner at submit and when a request ends, the dispatcher
when a call starts, the supervisor on a death or a restart); nothing here touches a
socket or a process. Labels are bounded: an outcome, a phase, a family name, a rank;
never a prompt, an id or a seed.

A result that is a dict is read the way the diffusion workers shape theirs:
``num_images`` counts images, ``timings`` gives the phases (seconds), ``new_shapes`` the
CUDA graph captures or compiles the call needed (a warm-up size is missing).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import (
    InvalidRequestError,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    WorkerDiedError,
    WorkerError,
)

__all__ = [
    "CALL_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "OUTCOMES",
    "PHASES",
    "Histogram",
    "RunnerStats",
    "outcome_of",
]

logger = logging.getLogger("gridgen.runner")

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
)
"""Seconds: from a 64x64 two-step CPU request's phases (milliseconds) to a queue of
1024x1024 GPU requests (a few seconds each, minutes at the back of a long queue)."""

CALL_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
"""Requests (or images) per merged call."""

PHASES = ("queue_wait", "text_encode", "denoise", "decode", "gather", "encode")
"""The latency phases of a request: ``queue_wait`` measured on the host, the others as
the worker reports them in ``timings`` (``denoise`` without ``text_encode``)."""

OUTCOMES = ("ok", "invalid", "cancelled", "timeout", "worker_error", "worker_died", "queue_full", "closed", "error")
"""How a request ended (``closed``: refused or dropped because the runner was not running)."""


def outcome_of(error: BaseException | None) -> str:
    """The outcome label of a request that ended with ``error`` (None: ``ok``)."""
    if error is None:
        return "ok"
    for kind, outcome in (
        (InvalidRequestError, "invalid"),
        (QueueFull, "queue_full"),
        (RequestTimeout, "timeout"),
        (RunnerClosed, "closed"),
        (RequestCancelled, "cancelled"),
        (WorkerDiedError, "worker_died"),
        (WorkerError, "worker_error"),
        (TypeError, "invalid"),
        (ValueError, "invalid"),
    ):
        if isinstance(error, kind):
            return outcome
    return "error"


class Histogram:
    """Counts per bucket (upper bounds, ``+Inf`` implied), a sum and a count, as Prometheus keeps them."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations <= it)`` per bucket, ``+Inf`` last (Prometheus' form)."""
        out, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum, "buckets": dict(self.cumulative())}


Listener = Callable[[str, Mapping[str, str], float], None]
"""Called with (metric name, labels, value) for every count and observation: how a push
exporter (Ray's metrics) sees the numbers as they happen."""


class RunnerStats:
    """The counters of one runner, across its restarts and stop/start cycles."""

    def __init__(self, family: str = "none") -> None:
        self.family = family  # the worker's family (images are counted by it)
        self.requests: Counter[str] = Counter()  # by outcome
        self.images: Counter[str] = Counter()  # by family
        self.call_requests = Histogram(CALL_SIZE_BUCKETS)
        self.call_units = Histogram(CALL_SIZE_BUCKETS)
        self.phases = {phase: Histogram(LATENCY_BUCKETS) for phase in PHASES}
        self.request_seconds: dict[str, Histogram] = {}  # by outcome: submission to outcome
        self.worker_restarts = 0
        self.worker_deaths = 0
        self.new_shapes = 0
        self.gpu_memory: dict[str, int] = {}  # rank -> bytes used on its device, at the last result
        self.listeners: list[Listener] = []
        self._gpu_devices: list[int] | None = None  # CUDA indices by rank; None: no sampling

    # -- what the owners report ---------------------------------------------------------

    def use_devices(self, devices: Sequence[str]) -> None:
        """Sample GPU memory per rank when results arrive if the ranks run on CUDA."""
        if all(d.startswith("cuda") for d in devices):
            self._gpu_devices = [int(d.partition(":")[2] or 0) for d in devices]

    def rejected(self, error: BaseException) -> None:
        """A request refused at submit (queue full, invalid, runner not running)."""
        self._count("requests", outcome_of(error))

    def call_started(self, units: Sequence[int], waits: Sequence[float]) -> None:
        """One call on the group: the work units (images) of each of its requests, and how
        long each waited in the queue."""
        self._observe(self.call_requests, "call_requests", {}, len(units))
        self._observe(self.call_units, "call_images", {}, sum(units))
        for wait in waits:
            self._observe(self.phases["queue_wait"], "phase_seconds", {"phase": "queue_wait"}, wait)

    def finished(self, error: BaseException | None, result: Any, seconds: float, internal: bool = False) -> None:
        """A request ended (``result`` when ``error`` is None), ``seconds`` after submission."""
        if internal:
            return
        outcome = outcome_of(error)
        self._count("requests", outcome)
        histogram = self.request_seconds.setdefault(outcome, Histogram(LATENCY_BUCKETS))
        self._observe(histogram, "request_seconds", {"outcome": outcome}, seconds)
        if error is None and isinstance(result, Mapping):
            self._read_result(result)

    def worker_died(self) -> None:
        self.worker_deaths += 1
        self._emit("worker_deaths", {}, 1)

    def group_restarted(self) -> None:
        self.worker_restarts += 1
        self._emit("worker_restarts", {}, 1)

    # -- reading ---------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "images": dict(self.images),
            "call_requests": self.call_requests.as_dict(),
            "call_images": self.call_units.as_dict(),
            "phase_seconds": {phase: h.as_dict() for phase, h in self.phases.items()},
            "request_seconds": {outcome: h.as_dict() for outcome, h in self.request_seconds.items()},
            "worker_restarts": self.worker_restarts,
            "worker_deaths": self.worker_deaths,
            "new_shapes": self.new_shapes,
            "gpu_memory_bytes": dict(self.gpu_memory),
        }

    # -- internals -------------------------------------------------------------------------

    def _read_result(self, result: Mapping[str, Any]) -> None:
        images = result.get("num_images")
        if type(images) is int and images > 0:
            self.images[self.family] += images
            self._emit("images", {"family": self.family}, images)
        timings = result.get("timings")
        if isinstance(timings, Mapping):
            phases = {k: v for k, v in timings.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if "denoise" in phases and "text_encode" in phases:
                phases["denoise"] = max(0.0, phases["denoise"] - phases["text_encode"])
            for phase in PHASES[1:]:
                if phase in phases:
                    self._observe(self.phases[phase], "phase_seconds", {"phase": phase}, float(phases[phase]))
        shapes = result.get("new_shapes")
        if type(shapes) is int and shapes > 0:
            self.new_shapes += shapes
            self._emit("new_shapes", {}, shapes)
        self._sample_gpu_memory()

    def _sample_gpu_memory(self) -> None:
        if self._gpu_devices is None:
            return
        started = time.perf_counter()
        try:
            import torch

            # NVML through torch: reads the device's used memory without a CUDA context here.
            used = [int(torch.cuda.device_memory_used(index)) for index in self._gpu_devices]
        except Exception as exc:  # no NVML (nvidia-ml-py) or no driver: stop trying
            logger.info("GPU memory per rank is not sampled: %s", exc)
            self._gpu_devices = None
            return
        for rank, value in enumerate(used):
            self.gpu_memory[str(rank)] = value
        if time.perf_counter() - started > 0.05:
            logger.debug("sampling GPU memory took %.3fs", time.perf_counter() - started)

    def _count(self, name: str, outcome: str) -> None:
        self.requests[outcome] += 1
        self._emit(name, {"outcome": outcome}, 1)

    def _observe(self, histogram: Histogram, name: str, labels: Mapping[str, str], value: float) -> None:
        histogram.observe(value)
        self._emit(name, labels, value)

    def _emit(self, name: str, labels: Mapping[str, str], value: float) -> None:
        for listener in self.listeners:
            try:
                listener(name, labels, value)
            except Exception:
                logger.exception("a stats listener failed on %s", name)
