"""A runner's numbers for Prometheus, through ``prometheus-client`` (the ``server`` extra).

:class:`RunnerCollector` reads ``runner.stats()`` at each scrape, so nothing is counted
twice and nothing polls. ``gridgen serve`` and :func:`gridgen.server.create_app` register
one for their runner and serve it at ``/metrics``; a library user registers one in a
registry of their own::

    from prometheus_client import CollectorRegistry, generate_latest
    from gridgen.metrics import RunnerCollector

    registry = CollectorRegistry()
    registry.register(RunnerCollector(runner))
    print(generate_latest(registry).decode())

Every metric, its labels and its meaning are in docs/operations.md; :data:`METRIC_NAMES`
lists them (with the HTTP service's own).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._stats import OUTCOMES, PHASES

__all__ = ["HTTP_METRIC_NAMES", "METRIC_NAMES", "RunnerCollector", "runner_metric_help"]

_RUNNER_METRICS = {
    "gridgen_runner_requests_total": "Requests the runner took or refused, by outcome",
    "gridgen_images_total": "Images generated, by model family",
    "gridgen_queue_depth": "Requests waiting in the runner's queue",
    "gridgen_requests_in_flight": "Requests out of the queue, not yet answered",
    "gridgen_merged_call_requests": "Requests per call on the worker group (1: not merged)",
    "gridgen_merged_call_images": "Images (work units) per call on the worker group",
    "gridgen_phase_duration_seconds": "Seconds per request phase: queue_wait, text_encode, denoise, decode, gather, "
    "encode",
    "gridgen_request_duration_seconds": "Seconds from submission to outcome, by outcome",
    "gridgen_worker_restarts_total": "Times the worker group was rebuilt",
    "gridgen_worker_deaths_total": "Worker processes that died while serving",
    "gridgen_workers_ready": "1 when every rank is started and healthy and requests run, else 0",
    "gridgen_world_size": "Worker processes (ranks) of the runner",
    "gridgen_new_shapes_total": "CUDA graph captures or compiles that requests waited for (a warm-up size is missing)",
    "gridgen_gpu_memory_used_bytes": "GPU memory used on each rank's device, sampled when a result arrives",
}

HTTP_METRIC_NAMES = ("gridgen_http_requests_total", "gridgen_http_request_duration_seconds")
"""The HTTP service's own metrics (:mod:`gridgen.server.metrics`)."""

METRIC_NAMES = (*_RUNNER_METRICS, *HTTP_METRIC_NAMES)
"""Every metric gridgen exports (as written in a query: counters with ``_total``)."""


def runner_metric_help(name: str) -> str:
    """The help text of a runner metric (its name as in a query: counters with ``_total``)."""
    return _RUNNER_METRICS[name]


def _histogram(name: str, labels: list[str], series: Mapping[tuple[str, ...], Mapping[str, Any]]) -> Metric:
    family = HistogramMetricFamily(name, runner_metric_help(name), labels=labels)
    for values, data in series.items():
        buckets = [(bound, float(count)) for bound, count in data["buckets"].items()]
        family.add_metric(list(values), buckets, sum_value=data["sum"])
    return family


class RunnerCollector(Collector):
    """A Prometheus collector of one runner's :meth:`~gridgen.DistributedRunner.stats`.

    Args:
        runner: the runner (any object with a ``stats()`` of the same shape).
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def describe(self) -> list[Metric]:
        return []  # metrics are produced at collect time only; registering reads no stats

    def collect(self) -> Iterator[Metric]:
        stats = self.runner.stats()
        requests = CounterMetricFamily("gridgen_runner_requests", runner_metric_help("gridgen_runner_requests_total"),
                                       labels=["outcome"])
        for outcome in OUTCOMES:  # every outcome, zeros too: rate() needs the series to exist
            requests.add_metric([outcome], stats["requests"].get(outcome, 0))
        yield requests
        images = CounterMetricFamily("gridgen_images", runner_metric_help("gridgen_images_total"), labels=["family"])
        for family, count in stats["images"].items():
            images.add_metric([family], count)
        yield images
        yield GaugeMetricFamily("gridgen_queue_depth", runner_metric_help("gridgen_queue_depth"), value=stats["queue_size"])
        yield GaugeMetricFamily(
            "gridgen_requests_in_flight", runner_metric_help("gridgen_requests_in_flight"), value=stats["in_flight"]
        )
        yield _histogram("gridgen_merged_call_requests", [], {(): stats["call_requests"]})
        yield _histogram("gridgen_merged_call_images", [], {(): stats["call_images"]})
        phases = stats["phase_seconds"]
        yield _histogram("gridgen_phase_duration_seconds", ["phase"], {(p,): phases[p] for p in PHASES})
        yield _histogram(
            "gridgen_request_duration_seconds",
            ["outcome"],
            {(outcome,): data for outcome, data in stats["request_seconds"].items()},
        )
        for name, key in (("gridgen_worker_restarts", "worker_restarts"), ("gridgen_worker_deaths", "worker_deaths"),
                          ("gridgen_new_shapes", "new_shapes")):
            yield CounterMetricFamily(name, runner_metric_help(f"{name}_total"), value=stats[key])
        yield GaugeMetricFamily("gridgen_workers_ready", runner_metric_help("gridgen_workers_ready"), value=int(stats["ready"]))
        yield GaugeMetricFamily("gridgen_world_size", runner_metric_help("gridgen_world_size"), value=stats["world_size"])
        memory = GaugeMetricFamily(
            "gridgen_gpu_memory_used_bytes", runner_metric_help("gridgen_gpu_memory_used_bytes"), labels=["rank"]
        )
        for rank, used in stats["gpu_memory_bytes"].items():
            memory.add_metric([rank], used)
        yield memory
