"""The runner's numbers (gridgen._stats) and their Prometheus form (gridgen.metrics), without processes."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gridgen._stats import Histogram, RunnerStats, outcome_of
from gridgen.errors import (
    InvalidRequestError,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    WorkerDiedError,
    WorkerError,
)
from gridgen.metrics import METRIC_NAMES, RunnerCollector


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4 and histogram.sum == pytest.approx(3.65)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (InvalidRequestError([]), "invalid"),
        (QueueFull("full"), "queue_full"),
        (RequestTimeout("late"), "timeout"),
        (RequestCancelled("gone"), "cancelled"),
        (RunnerClosed("the runner is not running"), "closed"),
        (WorkerError("boom", rank=1), "worker_error"),
        (WorkerDiedError(0, -9), "worker_died"),
        (TypeError("not a dict"), "invalid"),
        (KeyError("x"), "error"),
    ],
)
def test_each_error_has_its_outcome(error: BaseException | None, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_a_result_counts_images_by_family_and_its_phases() -> None:
    stats = RunnerStats("sdxl")
    timings = {"setup": None, "text_encode": 0.25, "denoise": 1.0, "decode": 0.5, "gather": 0.0, "encode": 0.1}
    stats.finished(None, {"num_images": 3, "timings": timings, "new_shapes": 2}, 2.0)
    stats.finished(WorkerError("boom", rank=0), None, 0.5)
    stats.finished(None, {"num_images": 9}, 0.1, internal=True)  # a keepalive: not counted
    data = stats.as_dict()
    assert data["requests"] == {"ok": 1, "worker_error": 1}
    assert data["images"] == {"sdxl": 3}
    assert data["new_shapes"] == 2
    assert data["phase_seconds"]["denoise"]["sum"] == pytest.approx(0.75)  # without text encoding
    assert data["phase_seconds"]["text_encode"]["count"] == 1
    assert data["request_seconds"]["ok"]["count"] == 1 and data["request_seconds"]["worker_error"]["count"] == 1


def test_listeners_see_every_count_and_observation() -> None:
    stats = RunnerStats("flux-dev")
    seen: list[tuple[str, dict[str, str], float]] = []
    stats.listeners.append(lambda name, labels, value: seen.append((name, dict(labels), value)))
    stats.call_started([2, 1], [0.01, 0.02])
    stats.rejected(QueueFull("full"))
    assert ("call_requests", {}, 2) in seen and ("call_images", {}, 3) in seen
    assert ("phase_seconds", {"phase": "queue_wait"}, 0.02) in seen
    assert ("requests", {"outcome": "queue_full"}, 1) in seen


def test_gpu_memory_is_sampled_per_rank_when_a_result_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # No GPU here: NVML's reading is replaced by a fake one (the only mock: CUDA cannot run).
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda index: 1000 + index, raising=False)
    stats = RunnerStats()
    stats.use_devices(["cuda:0", "cuda:3"])
    assert stats.gpu_memory == {}
    stats.finished(None, {"num_images": 1}, 1.0)
    assert stats.gpu_memory == {"0": 1000, "1": 1003}


def test_no_gpu_sampling_on_cpu_or_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    cpu = RunnerStats()
    cpu.use_devices(["cpu", "cpu"])
    cpu.finished(None, {}, 1.0)
    assert cpu.gpu_memory == {}

    def no_nvml(index: int) -> int:
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "device_memory_used", no_nvml, raising=False)
    gpu = RunnerStats()
    gpu.use_devices(["cuda:0"])
    gpu.finished(None, {}, 1.0)
    gpu.finished(None, {}, 1.0)  # tried once, then never again
    assert gpu.gpu_memory == {} and gpu._gpu_devices is None


class _FakeRunner:
    def __init__(self, stats: RunnerStats) -> None:
        self._stats = stats

    def stats(self) -> dict[str, Any]:
        return {"state": "ready", "ready": True, "world_size": 2, "queue_size": 3, "in_flight": 1,
                **self._stats.as_dict()}


def test_the_collector_exports_every_runner_metric_in_the_text_format() -> None:
    stats = RunnerStats("sdxl")
    stats.use_devices(["cpu"])
    stats.call_started([1, 1], [0.0, 0.001])
    stats.finished(None, {"num_images": 2, "timings": {"denoise": 0.2}}, 0.3)
    stats.gpu_memory = {"0": 123}
    registry = CollectorRegistry()
    registry.register(RunnerCollector(_FakeRunner(stats)))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    runner_names = {name.removesuffix("_total") for name in METRIC_NAMES if not name.startswith("gridgen_http_")}
    assert set(families) == runner_names
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("gridgen_runner_requests_total", (("outcome", "ok"),))] == 1
    assert samples[("gridgen_runner_requests_total", (("outcome", "queue_full"),))] == 0
    assert samples[("gridgen_images_total", (("family", "sdxl"),))] == 2
    assert samples[("gridgen_queue_depth", ())] == 3
    assert samples[("gridgen_merged_call_requests_sum", ())] == 2
    assert samples[("gridgen_phase_duration_seconds_count", (("phase", "denoise"),))] == 1
    assert samples[("gridgen_gpu_memory_used_bytes", (("rank", "0"),))] == 123
    assert samples[("gridgen_workers_ready", ())] == 1
