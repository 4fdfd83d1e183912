"""A replica's runner numbers in Ray's metrics, so Prometheus sees every replica.

Through Ray Serve's proxy, ``GET /metrics`` answers for whichever replica the router
picked. Instead each replica pushes its runner's counts and observations, as they happen,
into ``ray.serve.metrics``: Ray's metrics agent on each node exports them with the
``deployment``, ``replica`` and ``application`` tags, under the same names as ``/metrics``
with Ray's ``ray_`` prefix (``ray_gridgen_runner_requests_total{replica="...", outcome="ok"}``).
Gauges (queue depth, in flight, ready, world size, GPU memory) are set on every event and
at each of Ray's health checks.

The HTTP service's own two metrics are not mirrored: Ray Serve counts each replica's HTTP
requests and latencies itself (``ray_serve_deployment_request_counter_total``,
``ray_serve_deployment_processing_latency_ms``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import metrics

from gridgen._stats import CALL_SIZE_BUCKETS, LATENCY_BUCKETS
from gridgen.metrics import runner_metric_help

__all__ = ["ReplicaMetrics"]

# stats listener name -> (metric name as in /metrics without "_total", its one tag key or None)
_COUNTERS: dict[str, tuple[str, tuple[str] | None]] = {
    "requests": ("gridgen_runner_requests", ("outcome",)),
    "images": ("gridgen_images", ("family",)),
    "worker_restarts": ("gridgen_worker_restarts", None),
    "worker_deaths": ("gridgen_worker_deaths", None),
    "new_shapes": ("gridgen_new_shapes", None),
}
_HISTOGRAMS: dict[str, tuple[str, tuple[str] | None, tuple[float, ...]]] = {
    "call_requests": ("gridgen_merged_call_requests", None, CALL_SIZE_BUCKETS),
    "call_images": ("gridgen_merged_call_images", None, CALL_SIZE_BUCKETS),
    "phase_seconds": ("gridgen_phase_duration_seconds", ("phase",), LATENCY_BUCKETS),
    "request_seconds": ("gridgen_request_duration_seconds", ("outcome",), LATENCY_BUCKETS),
}
_GAUGES = ("gridgen_queue_depth", "gridgen_requests_in_flight", "gridgen_workers_ready", "gridgen_world_size")


class ReplicaMetrics:
    """Mirrors one runner's stats into ``ray.serve.metrics`` (built inside a replica)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.counters = {
            key: metrics.Counter(name, runner_metric_help(f"{name}_total"), tag_keys=tags)
            for key, (name, tags) in _COUNTERS.items()
        }
        self.histograms = {
            key: metrics.Histogram(name, runner_metric_help(name), boundaries=list(bounds), tag_keys=tags)
            for key, (name, tags, bounds) in _HISTOGRAMS.items()
        }
        self.gauges = {name: metrics.Gauge(name, runner_metric_help(name)) for name in _GAUGES}
        memory = "gridgen_gpu_memory_used_bytes"
        self.gpu_memory = metrics.Gauge(memory, runner_metric_help(memory), tag_keys=("rank",))
        runner.add_stats_listener(self.record)
        self.refresh()

    def record(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """A stats listener: one count or observation of the runner."""
        tags = dict(labels)
        if name in self.counters:
            self.counters[name].inc(value, tags=tags)
        elif name in self.histograms:
            self.histograms[name].observe(value, tags=tags)
        self.refresh()

    def refresh(self) -> None:
        """Set the gauges from the runner as it is now."""
        runner = self.runner
        for name, value in (
            ("gridgen_queue_depth", runner.queue_size),
            ("gridgen_requests_in_flight", runner.in_flight),
            ("gridgen_workers_ready", int(runner.ready)),
            ("gridgen_world_size", runner.world_size),
        ):
            self.gauges[name].set(value)
        for rank, used in runner.stats()["gpu_memory_bytes"].items():
            self.gpu_memory.set(used, tags={"rank": rank})
