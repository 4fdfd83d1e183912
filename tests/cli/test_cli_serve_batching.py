"""``gridgen serve --max-batch`` / ``--max-batch-units`` (issue 12): parsed, checked before any
worker starts, and passed to the runner (and to every Ray replica).

Merging is observed as in tests/sdxl/test_sdxl_batching_runner.py: requests served by one
call report the same ``timings.denoise`` (the shared phase), requests served apart do not.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gridgen._preflight import UsageError, batch_options, check_serve_options
from gridgen.cli import build_parser

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "num_images": 1, "image_format": "jpeg"}
BLOCKER = {"prompt": "blocker", "width": 256, "height": 256, "num_inference_steps": 150, "num_images": 2,
           "preview_every": 1}
"""A request of another shape that holds the workers (150 steps: far longer than needed) until
the two small requests sent once it streams its first step are both queued; then the test
leaves its stream, which cancels it and frees the group for them."""


def _serve_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--model", "tiny", *extra])


def test_max_batch_defaults_to_the_runners_and_is_passed_through() -> None:
    from gridgen._options import RunnerOptions

    default = _serve_args()
    assert batch_options(default) == {"max_batch": RunnerOptions.max_batch, "max_batch_units": None}
    capped = _serve_args("--max-batch", "1", "--max-batch-units", "4")
    assert batch_options(capped) == {"max_batch": 1, "max_batch_units": 4}
    RunnerOptions(**batch_options(capped))  # the runner accepts what serve passes
    check_serve_options(_serve_args("--max-batch", "0"))  # 0: no merging, allowed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--max-batch", "-1"), "--max-batch: must be 0 or more"),
        (("--max-batch-units", "0"), "--max-batch-units: must be at least 1"),
    ],
)
def test_bad_batch_limits_are_usage_errors(extra: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_serve_options(_serve_args(*extra))


def test_bad_max_batch_exits_2_before_any_worker_starts_also_with_ray() -> None:
    for ray in ((), ("--ray", "127.0.0.1:1")):
        result = subprocess.run(
            [sys.executable, "-m", "gridgen.cli", "serve", "--model", "tiny", "--device", "cpu",
             "--max-batch", "-2", "--port", "8123", *ray],
            capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert result.returncode == 2, result.stderr
        assert "--max-batch: must be 0 or more" in result.stderr and "got -2" in result.stderr
        assert "starting" not in result.stderr and "deploying" not in result.stderr


def test_ray_replicas_get_the_batch_options(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from gridgen.cli import _ray as _cli

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    args = _serve_args("--ray", "auto", "--max-batch", "3", "--max-batch-units", "6", "--workers", "2")
    app, described = _cli._application(args, 1, None, {"optimize": "graphs", "warmup": [1]})
    spec = app._bound_deployment.init_args[0]
    assert spec.runner_options == {"max_batch": 3, "max_batch_units": 6}
    assert spec.setup_kwargs == {"model": "tiny", "optimize": "graphs", "warmup": [1]}
    assert "2 CPU rank(s)" in described


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("gridgen-serve-batching-cache"))
    env = {**os.environ, "GRIDGEN_CACHE": path, "HF_HUB_OFFLINE": "1"}
    # build the tiny model once, not in each server process
    subprocess.run([sys.executable, "-c", "from gridgen.sdxl import ensure_tiny_sdxl; ensure_tiny_sdxl()"],
                   check=True, env=env, timeout=300)
    return path


@pytest.fixture
def serve(tiny_cache: str) -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> str:
        import httpx

        process = subprocess.Popen(
            [sys.executable, "-m", "gridgen.cli", "serve", "--model", "tiny", "--device", "cpu", "--workers", "2",
             "--port", "0", "--log-level", "warning", *extra],
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "GRIDGEN_CACHE": tiny_cache},
        )
        processes.append(process)
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", banner)
        assert match, banner
        url = match.group(1)
        deadline = time.monotonic() + 100
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        return url

    yield start
    for process in processes:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def _two_behind_a_blocker(url: str) -> list[dict[str, Any]]:
    """POST the blocker, then (once it runs) two small requests; return the small results."""
    import httpx

    def post(payload: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{url}/generate", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    with ThreadPoolExecutor(2) as pool:
        with httpx.stream("POST", f"{url}/stream", json=BLOCKER, timeout=120) as blocker:
            assert blocker.status_code == 200
            lines = blocker.iter_lines()
            next(line for line in lines if line.startswith("event: progress"))  # it runs on the workers now
            small = [pool.submit(post, {**SMALL, "prompt": f"small {i}", "seed": 10 + i}) for i in range(2)]
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/ready", timeout=10).json()["queue_size"] < 2:
                assert time.monotonic() < deadline and not any(f.done() for f in small), "not queued"
                time.sleep(0.05)
        # Leaving the stream cancelled the blocker: the group takes the two queued requests.
        results = [future.result() for future in small]
    return results


# Two services of two workers each: 24 s alone, 61 s on a loaded two-core machine.
@pytest.mark.timeout(240)
def test_serve_merges_queued_requests_by_default_and_not_with_max_batch_1(serve: Any) -> None:
    merged = _two_behind_a_blocker(serve())
    assert [r["seeds"] for r in merged] == [[10], [11]]
    assert merged[0]["timings"]["denoise"] == merged[1]["timings"]["denoise"], "default: not merged"
    apart = _two_behind_a_blocker(serve("--max-batch", "1"))
    assert [r["seeds"] for r in apart] == [[10], [11]]
    assert apart[0]["timings"]["denoise"] != apart[1]["timings"]["denoise"], "--max-batch 1: merged"
