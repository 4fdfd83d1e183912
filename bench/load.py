"""Load test of a gridgen HTTP service: open-loop Poisson arrivals at fractions of its capacity.

Either drive a running server (``--url``) or let the script start ``gridgen serve`` itself
(``--model`` and the other serve options; one server per ``--batch-wait`` value, so the
merge window can be compared). For each server it:

1. measures capacity: completed requests per second with ``--concurrency`` clients
   sending back to back (closed loop) for ``--capacity-seconds``;
2. for each ``--fractions`` (default 0.5, 0.8, 1.0, 1.2 of that capacity) sends requests
   with exponential gaps (Poisson arrivals: each request goes out on time, whether or not
   the earlier ones were answered) for ``--seconds``, then waits for every answer;
3. reports p50/p95/p99 latency of the 200s, throughput, 503s, other errors, and requests
   lost (sent and never answered; must be 0), and checks that the server's ``/metrics``
   counted what the client sent (``gridgen_http_requests_total`` for ``/generate``);
4. with ``--burst N``: sends N one-image requests at once on an idle server, ``--bursts``
   times, and reads from ``/metrics`` how many calls each burst took.

Results go to ``--out`` (JSON), rewritten after each step so a cut run keeps what it
measured. CPU example (the tiny model, a few minutes)::

    python bench/load.py --model tiny --device cpu --workers 2 --width 64 --height 64 \\
        --steps 2 --batch-wait 0,0.005,0.02 --burst 8 --out bench/results/load-cpu-tiny.json

GPU (one H100/H200, optimised SDXL at 1024x1024, one image per request)::

    python bench/load.py --model sdxl-random --workers 1 --width 1024 --height 1024 --steps 20 \\
        --serve-arg=--warmup=1,2,4,8 --batch-wait 0,0.005 --burst 8 --seconds 120 \\
        --out bench/results/load-gpu-sdxl.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (else one is started per --batch-wait)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--serve-arg", action="append", default=[], help="more `gridgen serve` arguments")
    p.add_argument("--batch-wait", default=None, help="comma-separated merge windows (seconds) to compare")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--fractions", default="0.5,0.8,1.0,1.2")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each load level")
    p.add_argument("--capacity", type=float, default=None, help="requests/s (default: measured)")
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--bursts", type=int, default=5)
    p.add_argument("--timeout", type=float, default=600.0, help="client limit per request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def _body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {"prompt": "a lighthouse at dawn", "width": args.width, "height": args.height,
            "num_inference_steps": args.steps, "num_images": 1, "seed": seed,
            "image_format": "jpeg", "output": "images"}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _send(client: httpx.AsyncClient, body: dict[str, Any], out: list[dict[str, Any]]) -> None:
    started = time.perf_counter()
    entry: dict[str, Any] = {"status": None}
    try:
        response = await client.post("/generate", json=body)
        entry["status"] = response.status_code
    except Exception as exc:  # no answer: lost, unless the server said something
        entry["error"] = type(exc).__name__
    entry["seconds"] = time.perf_counter() - started
    out.append(entry)


async def capacity(url: str, args: argparse.Namespace) -> float:
    done = 0
    deadline = time.perf_counter() + args.capacity_seconds
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout,
                                 limits=httpx.Limits(max_connections=args.concurrency)) as client:
        async def loop(k: int) -> None:
            nonlocal done
            seed = k * 100_000
            while time.perf_counter() < deadline:
                seed += 1
                if (await client.post("/generate", json=_body(args, seed))).status_code == 200:
                    done += 1
        started = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(args.concurrency)))
        return done / (time.perf_counter() - started)


async def open_loop(url: str, args: argparse.Namespace, rate: float, rng: random.Random) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    tasks = []
    before = scrape(url)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=httpx.Limits(max_connections=None)) as client:
        started = time.perf_counter()
        next_at = started
        sent = 0
        while next_at - started < args.seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(_send(client, _body(args, rng.randrange(2**40)), results)))
            sent += 1
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)  # the server counts a request once its response is sent
    after = scrape(url)
    ok = [r["seconds"] for r in results if r["status"] == 200]
    refused = sum(1 for r in results if r["status"] == 503)
    answered = sum(1 for r in results if r["status"] is not None)
    counted = {k: _sum(after, "gridgen_http_requests_total", route="/generate", **k_) -
               _sum(before, "gridgen_http_requests_total", route="/generate", **k_)
               for k, k_ in (("all", {}), ("ok", {"outcome": "ok"}), ("503", {"status_class": "5xx"}))}
    calls = _sum(after, "gridgen_merged_call_requests_count") - _sum(before, "gridgen_merged_call_requests_count")
    merged = _sum(after, "gridgen_merged_call_requests_sum") - _sum(before, "gridgen_merged_call_requests_sum")
    return {
        "rate": rate, "sent": sent, "ok": len(ok), "status_503": refused,
        "errors": answered - len(ok) - refused, "lost": sent - answered,
        "p50": _percentile(ok, 0.5), "p95": _percentile(ok, 0.95), "p99": _percentile(ok, 0.99),
        "throughput": len(ok) / elapsed, "seconds": elapsed,
        "requests_per_call": merged / calls if calls else None,
        "metrics": counted,
        "metrics_agree": counted["all"] == answered and counted["ok"] == len(ok),
    }


async def bursts(url: str, args: argparse.Namespace) -> dict[str, Any]:
    calls_per_burst, seconds = [], []
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout,
                                 limits=httpx.Limits(max_connections=args.burst)) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(args.burst)))  # open the connections
        for b in range(args.bursts):
            before = scrape(url)
            results: list[dict[str, Any]] = []
            started = time.perf_counter()
            await asyncio.gather(*(_send(client, _body(args, 1000 * b + k), results) for k in range(args.burst)))
            seconds.append(time.perf_counter() - started)
            after = scrape(url)
            calls_per_burst.append(_sum(after, "gridgen_merged_call_requests_count")
                                   - _sum(before, "gridgen_merged_call_requests_count"))
    return {"size": args.burst, "calls": calls_per_burst, "seconds": seconds,
            "median_seconds": statistics.median(seconds)}


def start_server(args: argparse.Namespace, batch_wait: str | None, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "gridgen.cli", "serve", "--model", args.model, "--port", "0",
               "--max-queue", "512", "--log-level", "warning", *args.serve_arg]
    for flag, value in (("--device", args.device), ("--workers", args.workers), ("--batch-wait", batch_wait)):
        if value is not None:
            command += [flag, str(value)]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 1800
    while True:
        match = re.search(r"listening on (http://[^/]+)/", log.read_text())
        if match and httpx.get(f"{match.group(1)}/ready", timeout=10).status_code == 200:
            return process, match.group(1)
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


async def run_one(url: str, args: argparse.Namespace, report: dict[str, Any], save: Any) -> None:
    if args.burst:
        report["burst"] = await bursts(url, args)
        save()
    fractions = [float(f) for f in args.fractions.split(",") if f]
    if not fractions:
        return
    report["capacity"] = args.capacity or await capacity(url, args)
    save()
    rng = random.Random(args.seed)
    report["levels"] = {}
    for fraction in fractions:
        report["levels"][str(fraction)] = await open_loop(url, args, fraction * report["capacity"], rng)
        save()
        print(f"  {fraction:.0%}: {json.dumps(report['levels'][str(fraction)])}", file=sys.stderr, flush=True)


def main() -> int:
    args = _parse()
    out: dict[str, Any] = {"command": " ".join(sys.argv), "machine": platform.node(), "cpus": os.cpu_count(),
                           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": {}}

    def save() -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=2) + "\n")

    waits = [None] if args.url or args.batch_wait is None else args.batch_wait.split(",")
    for wait in waits:
        name = "server" if wait is None else f"batch_wait={wait}"
        report: dict[str, Any] = {}
        out["runs"][name] = report
        print(f"{name}:", file=sys.stderr, flush=True)
        if args.url:
            asyncio.run(run_one(args.url, args, report, save))
            continue
        log = Path(tempfile.mkdtemp(prefix="gridgen-load-")) / "serve.log"
        process, url = start_server(args, wait, log)
        try:
            asyncio.run(run_one(url, args, report, save))
        finally:
            process.send_signal(signal.SIGTERM)
            report["server_exit"] = process.wait(120)
            save()
    lost = sum(level["lost"] for run in out["runs"].values() for level in run.get("levels", {}).values())
    disagree = [name for name, run in out["runs"].items()
                for level in run.get("levels", {}).values() if not level["metrics_agree"]]
    print(json.dumps(out, indent=2))
    if lost or disagree:
        print(f"FAILED: {lost} request(s) lost; /metrics disagreed in {disagree}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
