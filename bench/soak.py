"""Soak test: many requests of every kind against one runner, with workers killed along the way.

Runs ``--requests`` requests (default 1000) through one ``DistributedRunner`` with
``auto_restart=True`` on two CPU ranks, ``--concurrency`` callers at a time (so there is
always a queue), mixing:

* ``invoke``  - a normal request; must return a result;
* ``stream``  - streams previews, then the result; must end with the result;
* ``cancel``  - a stream the caller leaves after its first item, or an invoke whose task
  is cancelled after a few milliseconds; must end (CancelledError / early exit);
* ``timeout`` - an invoke with a time limit too short to finish; must raise RequestTimeout
  (or return, if it beat the limit);
* ``invalid`` - a payload that breaks the rules; must raise InvalidRequestError (the SDXL
  worker's rules are checked on the host, before the queue) or, with the probe worker,
  WorkerError (the payload makes a rank raise);
* ``kill``    - every ``--kill-every``-th request: once it runs, the host SIGKILLs one
  worker process (ranks alternate); must raise WorkerDiedError, and the group comes
  back by itself.

A request that ends with any other error is "unexpected"; one that does not end within
``--hard-limit`` seconds is "lost". The exit status is 1 when any request is unexpected
or lost, or the request after the run fails: a soak that drifts from what the runtime does
fails loudly. A request running when a kill hits
(e.g. a deferred result still being encoded) may fail with WorkerDiedError or
RequestCancelled: counted as "kill collateral", an expected failure.

Host and worker RSS, open file descriptors, semaphores in /dev/shm, child processes and
gridgen temp directories are recorded after a warm-up and at the end (and after stop()).

    python bench/soak.py                       # SDXL tiny model, 64x64, 2 steps
    python bench/soak.py --worker probe        # gridgen.testing.ProbeWorker, same mix
    python bench/soak.py --report bench/soak-report.md
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import glob
import os
import platform
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from gridgen import (
    DistributedRunner,
    InvalidRequestError,
    RequestCancelled,
    RequestTimeout,
    WorkerDiedError,
    WorkerError,
)

KINDS = ("invoke", "stream", "cancel", "timeout", "invalid")
WEIGHTS = (50, 25, 10, 10, 5)


@dataclass
class Stats:
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: dict[str, collections.Counter[str]] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    unexpected: list[str] = field(default_factory=list)
    kills: list[tuple[float, int, int]] = field(default_factory=list)  # (time, rank, pid)
    dropped_items: int = 0


# What an invalid payload must end with: the SDXL worker's rules are checked on the host at
# submit (its batch_key validates), the probe's "raise" op fails on a rank.
REJECTED_BY = {"sdxl": InvalidRequestError, "probe": WorkerError}


def payloads(worker: str, size: int, steps: int) -> dict[str, Any]:
    if worker == "sdxl":
        base = {"prompt": "a lighthouse at dusk", "width": size, "height": size, "num_inference_steps": steps}
        return {
            "invoke": base,
            "stream": {**base, "preview_every": 1},
            "cancel": {**base, "num_inference_steps": max(steps, 8), "preview_every": 1},
            "timeout": base,
            "invalid": {**base, "width": size + 1},  # not a multiple of 8
            "kill": {**base, "num_inference_steps": 50},  # long enough to be killed mid-way
        }
    return {
        "invoke": {"op": "allreduce"},
        "stream": {"op": "steps", "steps": steps, "delay": 0.01},
        "cancel": {"op": "steps", "steps": 50, "delay": 0.01},
        "timeout": {"op": "steps", "steps": 20, "delay": 0.01},
        "invalid": {"op": "raise", "on_rank": 1},
        "kill": {"op": "steps", "steps": 500, "delay": 0.01},
    }


def snapshot(runner: DistributedRunner[Any]) -> dict[str, Any]:
    host = psutil.Process()
    workers = []
    for pid in runner.pids:
        try:
            process = psutil.Process(pid)
            workers.append({"pid": pid, "rss": process.memory_info().rss, "fds": process.num_fds()})
        except (psutil.NoSuchProcess, TypeError):
            workers.append({"pid": pid, "rss": 0, "fds": 0})
    return {
        "host_rss": host.memory_info().rss,
        "host_fds": host.num_fds(),
        "host_threads": host.num_threads(),
        "workers": workers,
        "children": len([c for c in host.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]),
        "shm_semaphores": len(glob.glob("/dev/shm/sem.*")),
        "gridgen_dirs": len(glob.glob(os.path.join(tempfile.gettempdir(), "gridgen-*"))),
    }


def mb(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


async def one_request(
    runner: DistributedRunner[Any], i: int, kind: str, payload: dict[str, Any], stats: Stats, rng: random.Random,
    kill_rank: int, rejected_by: type[Exception] = InvalidRequestError,
) -> str:
    """Run request ``i``; return its outcome label."""
    if kind == "invoke":
        result = await runner.invoke(payload)
        assert isinstance(result, dict) and result, result
        return "completed"
    if kind == "stream":
        handle = runner.submit(payload, streaming=True)
        items = [item async for item in handle.events()]
        stats.dropped_items += handle.dropped_items
        assert isinstance(items[-1], dict) and ("grid" in items[-1] or "completed" in items[-1]), items[-1]
        return "completed"
    if kind == "cancel":
        if i % 2:
            async for _ in runner.stream(payload):
                break  # leaving the loop cancels the request on every rank
            return "cancelled"
        task = asyncio.create_task(runner.invoke(payload))
        await asyncio.sleep(rng.uniform(0, 0.05))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "completed"  # finished before the cancel
    if kind == "timeout":
        try:
            await runner.invoke(payload, timeout=0.005)
        except RequestTimeout:
            return "timed out"
        return "completed"
    if kind == "invalid":
        try:
            await runner.invoke(payload)
        except rejected_by:
            return "rejected"
        raise AssertionError("an invalid request succeeded")
    if kind == "kill":
        handle = runner.submit(payload)
        while handle.status == "queued" and not handle.done():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        pid = runner.pids[kill_rank]
        if pid is not None and not handle.done():
            stats.kills.append((time.monotonic(), kill_rank, pid))
            os.kill(pid, signal.SIGKILL)
        try:
            await handle.result()
        except WorkerDiedError as exc:
            assert exc.rank == kill_rank, exc
            return "worker died"
        raise AssertionError("the killed request succeeded")
    raise ValueError(kind)


def _near_a_kill(stats: Stats, started: float, ended: float) -> bool:
    return any(started - 1 <= at <= ended + 1 for at, _, _ in stats.kills)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "sdxl":
        from gridgen.sdxl import SDXLWorker

        worker_cls: Any = SDXLWorker
        setup: dict[str, Any] = {"model": "tiny"}
    else:
        from gridgen.testing import ProbeWorker

        worker_cls, setup = ProbeWorker, {}
    runner = DistributedRunner(
        worker_cls, world_size=2, device="cpu", auto_restart=True,
        error_grace=5.0, cancel_grace=10.0, collective_timeout=60.0, start_timeout=300.0,
    )
    # A temporary directory of the soak's own, so the count of gridgen-* dirs left is ours.
    tempfile.tempdir = tempfile.mkdtemp(prefix="soak-")
    rng = random.Random(args.seed)
    plan = []
    for i in range(args.requests):
        if args.kill_every and i % args.kill_every == args.kill_every // 2:
            plan.append("kill")
        else:
            plan.append(rng.choices(KINDS, WEIGHTS)[0])
    table = payloads(args.worker, args.size, args.steps)
    stats = Stats()

    started_at = time.monotonic()
    await runner.start(**setup)
    start_took = time.monotonic() - started_at
    for _ in range(5):  # warm-up, not counted
        await runner.invoke(table["invoke"])
    before = snapshot(runner)

    order = iter(enumerate(plan))
    kills_done = 0

    async def client() -> None:
        nonlocal kills_done
        for i, kind in order:
            kill_rank = kills_done % 2
            if kind == "kill":
                kills_done += 1
            t0 = time.monotonic()
            try:
                outcome = await asyncio.wait_for(
                    one_request(runner, i, kind, table[kind], stats, rng, kill_rank, REJECTED_BY[args.worker]),
                    args.hard_limit,
                )
            except TimeoutError:
                outcome = "LOST"
                stats.unexpected.append(f"#{i} {kind}: no result or error within {args.hard_limit}s")
            except (WorkerDiedError, RequestCancelled) as exc:
                if _near_a_kill(stats, t0, time.monotonic()):
                    outcome = "kill collateral"
                else:
                    outcome = "unexpected"
                    stats.unexpected.append(f"#{i} {kind}: {type(exc).__name__}: {exc}")
            except Exception as exc:  # every other ending is a finding
                outcome = "unexpected"
                stats.unexpected.append(f"#{i} {kind}: {type(exc).__name__}: {str(exc)[:300]}")
            elapsed = time.monotonic() - t0
            stats.outcomes[outcome] += 1
            stats.by_kind[kind][outcome] += 1
            stats.latencies[kind].append(elapsed)
            done = sum(stats.outcomes.values())
            if done % 100 == 0:
                print(f"{done} requests, {dict(stats.outcomes)}, {time.monotonic() - started_at:.0f}s", flush=True)

    run_started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    run_took = time.monotonic() - run_started
    while not runner.ready:  # a restart may still be under way
        await asyncio.sleep(0.1)
    final = await runner.invoke(table["invoke"])
    after = snapshot(runner)
    await runner.stop()
    await asyncio.sleep(0.5)
    with contextlib.suppress(OSError):
        os.rmdir(tempfile.gettempdir())  # only if empty: what is left shows in the report
    stopped = {
        "children": len([c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]),
        "shm_semaphores": len(glob.glob("/dev/shm/sem.*")),
        "gridgen_dirs": len(glob.glob(os.path.join(tempfile.gettempdir(), "gridgen-*"))),
    }
    return {
        "stats": stats, "before": before, "after": after, "stopped": stopped, "final_ok": bool(final),
        "start_took": start_took, "run_took": run_took, "plan": collections.Counter(plan),
    }


def report(args: argparse.Namespace, out: dict[str, Any], command: str) -> str:
    import torch

    stats: Stats = out["stats"]
    total = sum(stats.outcomes.values())
    completed = stats.outcomes["completed"]
    lost = stats.outcomes["LOST"]
    unexpected = stats.outcomes["unexpected"]
    expected_failures = total - completed - lost - unexpected
    before, after, stopped = out["before"], out["after"], out["stopped"]
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Soak report",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.node()}, {platform.system()} {platform.release()}, {cpu}, "
        f"{psutil.cpu_count()} CPU cores (shared with other work), {mb(psutil.virtual_memory().total)} RAM; "
        f"Python {platform.python_version()}, torch {torch.__version__}. Two CPU ranks (gloo).",
        "",
        f"Worker: {args.worker} ({'SDXLWorker, model=tiny' if args.worker == 'sdxl' else 'ProbeWorker'}), "
        f"{args.size}x{args.size}, {args.steps} steps; {args.concurrency} concurrent callers; "
        f"auto_restart=True; a worker SIGKILLed every {args.kill_every} requests.",
        "",
        f"Start: {out['start_took']:.1f} s. Run: {out['run_took']:.0f} s for {total} requests "
        f"({total / out['run_took']:.1f} req/s).",
        "",
        "## Outcomes",
        "",
        "| outcome | count |",
        "|---|---|",
        f"| completed (a result) | {completed} |",
        f"| failed with the expected error (cancelled, timed out, rejected, worker died, kill collateral) | {expected_failures} |",
        f"| unexpected error | {unexpected} |",
        f"| **lost** (neither result nor error within {args.hard_limit:.0f} s) | **{lost}** |",
        f"| total | {total} |",
        "",
        "| kind | planned | outcomes | median s | max s |",
        "|---|---|---|---|---|",
    ]
    for kind in ("invoke", "stream", "cancel", "timeout", "invalid", "kill"):
        lat = sorted(stats.latencies.get(kind, [])) or [0.0]
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(stats.by_kind[kind].items()))
        lines.append(f"| {kind} | {out['plan'][kind]} | {outcomes} | {lat[len(lat) // 2]:.3f} | {lat[-1]:.2f} |")
    lines += [
        "",
        f"Workers killed: {len(stats.kills)} (ranks {[rank for _, rank, _ in stats.kills]}); the group "
        f"came back by itself each time. Stream items dropped for slow readers: {stats.dropped_items}. "
        f"A request after the run: {'ok' if out['final_ok'] else 'FAILED'}.",
    ]
    if stats.unexpected:
        lines += ["", "Unexpected endings:", ""] + [f"- {u}" for u in stats.unexpected[:50]]
    lines += [
        "",
        "## Resources (after a 5-request warm-up, at the end of the run, after stop())",
        "",
        "| | start | end | after stop() |",
        "|---|---|---|---|",
        f"| host RSS | {mb(before['host_rss'])} | {mb(after['host_rss'])} | |",
        f"| host open fds | {before['host_fds']} | {after['host_fds']} | |",
        f"| host threads | {before['host_threads']} | {after['host_threads']} | |",
    ]
    for rank in range(len(before["workers"])):
        b, a = before["workers"][rank], after["workers"][rank]
        lines.append(f"| rank {rank} RSS (pid {b['pid']} -> {a['pid']}) | {mb(b['rss'])} | {mb(a['rss'])} | |")
        lines.append(f"| rank {rank} open fds | {b['fds']} | {a['fds']} | |")
    lines += [
        f"| live child processes of the host | {before['children']} | {after['children']} | {stopped['children']} |",
        f"| semaphores in /dev/shm (machine-wide) | {before['shm_semaphores']} | {after['shm_semaphores']} | {stopped['shm_semaphores']} |",
        f"| gridgen-* temp dirs | {before['gridgen_dirs']} | {after['gridgen_dirs']} | {stopped['gridgen_dirs']} |",
        "",
        "Worker figures at the end are those of the processes respawned after the last kill. "
        "The child process left after stop() is multiprocessing's resource tracker, which lives "
        "as long as the host (it is there before the first runner starts too). Semaphores in "
        "/dev/shm are machine-wide: with the SDXL worker each worker process creates one (tqdm's "
        "multiprocessing lock, first used by diffusers' from_pretrained) that stays until the host "
        "exits, when the resource tracker unlinks it: two per worker group started.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=("sdxl", "probe"), default="sdxl")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--kill-every", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--hard-limit", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=None, help="write the Markdown report here (also printed)")
    args = parser.parse_args()
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    out = asyncio.run(soak(args))
    text = report(args, out, command)
    print(text)
    if args.report:
        with open(args.report, "w") as f:
            f.write(text)
    return exit_status(out)


def exit_status(out: dict[str, Any]) -> int:
    """1 when any request ended unexpectedly or was lost, or the request after the run failed."""
    stats: Stats = out["stats"]
    return 1 if stats.outcomes["LOST"] or stats.outcomes["unexpected"] or not out["final_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
