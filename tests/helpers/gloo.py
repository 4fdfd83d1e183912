"""Run a function on two real gloo ranks, without a runner (for worker-side collectives).

``on_ranks(fn, tmp_path, *args)`` spawns one process per rank, joins them into a
``torch.distributed`` gloo group through a ``FileStore`` in ``tmp_path`` and returns each
rank's ``fn(rank, *args)`` (picklable), in rank order. A rank that raises fails the call
with its traceback. ``fn`` must be importable by module path (spawn re-imports it).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

_JOIN_SECONDS = 180  # two ranks importing diffusers on two shared cores


def _rank_main(
    fn: Callable[..., Any], rank: int, world: int, store: str, out: Any, args: tuple[Any, ...]
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on a small machine: do not oversubscribe the cores
    try:
        dist.init_process_group(
            "gloo", store=dist.FileStore(store, world), rank=rank, world_size=world
        )
        out.put((rank, "ok", fn(rank, *args)))
    except BaseException:
        out.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def on_ranks(fn: Callable[..., Any], tmp_path: Path, *args: Any, world: int = 2) -> list[Any]:
    """``[fn(0, *args), fn(1, *args), ...]``, each computed in its own gloo rank process."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    store = str(tmp_path / "gloo-store")
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world, store, out, args))
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in procs:
            rank, status, value = out.get(timeout=_JOIN_SECONDS)
            if status == "ok":
                results[rank] = value
            else:
                errors.append(f"rank {rank} raised:\n{value}")
                break  # the other rank may now wait in a collective forever
    except queue.Empty:
        errors.append(f"no answer from every rank within {_JOIN_SECONDS} s")
    finally:
        for proc in procs:
            proc.join(timeout=5 if errors else _JOIN_SECONDS)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[rank] for rank in range(world)]
