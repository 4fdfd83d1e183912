"""Workers that misbehave on request, for testing code built on gridgen.

``ProbeWorker`` does what each request's payload says, on the ranks it names,
so a test can make one rank raise, hang, exit, be killed or allocate memory at
a chosen point, while the other ranks wait in a collective:

```python
from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker

async with DistributedRunner(ProbeWorker, world_size=2, device="cpu") as runner:
    await runner.invoke({"op": "echo", "message": "hi"})
    await runner.invoke({"op": "raise", "on_rank": 1})     # WorkerError(rank=1)
    await runner.invoke({"op": "kill", "on_rank": 1})      # WorkerDiedError(rank=1)
```

Ops (``on_rank``: the rank that misbehaves, None for every rank):

* ``echo``: returns ``{"echo": message, "rank", "world_size", "device", "pid", "thread", "cuda_device"}``;
  when streaming, first streams ``items`` items ``{"i": i, "rank": rank}`` (every rank or ``on_rank``).
* ``value``: returns ``payload["value"]`` unchanged (codec round trips).
* ``deferred``: returns a ``concurrent.futures.Future`` that a thread resolves after
  ``delay`` seconds with ``{"deferred": message, "rank"}`` (or raises ``ValueError`` when
  ``fail`` is true): the rank is free for the next request before its value is sent.
* ``threads``: returns ``torch.get_num_threads()`` in this rank.
* ``calls``: returns how many requests this rank has served (keepalives included).
* ``unencodable``: returns a value the codec cannot carry (a ``threading.Lock``).
* ``allreduce``: all-reduces ``rank + 1`` and returns the sum.
* ``steps``: ``steps`` iterations of ``delay`` seconds, each ending with the collective
  ``should_stop()``; streams ``{"step": i}`` from rank 0; returns ``{"completed": n}``.
* ``last_steps``: what this rank's last ``steps`` request saw: ``{"completed": n,
  "cancelled": bool}`` (``cancelled``: the rank's cancel flag when that request ended).
* ``raise``: ``on_rank`` raises ``ValueError(message)``; the others enter an all-reduce
  (so they hang in a collective, as real worker code would), or return at once when
  ``peers`` is ``"return"``.
* ``hang``: ``on_rank`` sleeps ``seconds`` (default: forever); the others enter an all-reduce.
* ``exit``: ``on_rank`` calls ``os._exit(code)``; the others enter an all-reduce.
* ``kill``: ``on_rank`` sends itself ``signal`` (default SIGKILL); the others enter an all-reduce.
* ``alloc``: ``on_rank`` allocates ``bytes`` and holds them for the request.
* ``print``: writes ``message`` to stdout and stderr and logs it at WARNING.

``BatchProbeWorker`` is a ProbeWorker whose requests merge (issue 12's batching): requests
with the same ``batch`` value share one ``run_batch`` call (no ``batch``: ``__call__`` as
usual), each counting ``units`` work units (default 1); ``reject=True`` makes ``batch_key``
raise :class:`~gridgen.InvalidRequestError` on the host. ``run_batch`` runs ``steps``
iterations of ``delay`` seconds (the longest of the batch), each ending with the collective
``batch.cancelled()``; rank 0 streams ``{"step", "request_id"}`` to each live request; a
request with ``"op": "raise"`` makes rank ``on_rank`` raise for the whole batch. Each request
gets ``{"request_id", "message", "batch": [ids], "completed", "cancelled": [flags]}``.

``setup`` accepts ``fail_on_rank`` (raise there), ``hang_on_rank`` (sleep forever there),
``ignore_sigterm`` (the process ignores SIGTERM, to test the kill fallback) and
``teardown_marker`` (a file path each rank appends to in ``teardown``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from ._batch import Batch
from .errors import InvalidRequestError
from .worker import DistributedWorker

__all__ = ["BatchProbeWorker", "ProbeWorker"]

logger = logging.getLogger("gridgen.testing")


class ProbeWorker(DistributedWorker):
    """A worker driven by its payload; see the module docstring for the ops."""

    def setup(
        self,
        fail_on_rank: int | None = None,
        hang_on_rank: int | None = None,
        ignore_sigterm: bool = False,
        teardown_marker: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.setup_kwargs = kwargs
        self.teardown_marker = teardown_marker
        self.calls = 0
        self.last_steps: dict[str, Any] | None = None
        if ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if fail_on_rank is not None and self.rank == fail_on_rank:
            raise RuntimeError(f"setup failed on purpose on rank {self.rank}")
        if hang_on_rank is not None and self.rank == hang_on_rank:
            time.sleep(10**6)

    def teardown(self) -> None:
        if self.teardown_marker:
            with open(self.teardown_marker, "a") as f:
                f.write(f"{self.rank}\n")

    def _targeted(self, on_rank: int | None) -> bool:
        return on_rank is None or on_rank == self.rank

    def _wait_in_collective(self) -> None:
        import torch
        import torch.distributed as dist

        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(torch.ones(1))

    def __call__(self, streaming: bool = False, op: str = "echo", on_rank: int | None = None, **payload: Any) -> Any:
        self.calls += 1
        if op == "echo":
            if streaming:
                for i in range(int(payload.get("items", 0))):
                    if self._targeted(on_rank):
                        self.add_streaming_result({"i": i, "rank": self.rank})
            return self._echo(payload.get("message", ""))
        if op == "value":
            return payload.get("value")
        if op == "deferred":
            return self._deferred(float(payload.get("delay", 0.5)), payload.get("message"), bool(payload.get("fail")))
        if op == "threads":
            import torch

            return torch.get_num_threads()
        if op == "calls":
            return self.calls
        if op == "unencodable":
            return {"bad": threading.Lock()}
        if op == "allreduce":
            import torch
            import torch.distributed as dist

            value = torch.tensor([self.rank + 1])
            dist.all_reduce(value)
            return {"sum": int(value.item())}
        if op == "steps":
            steps, delay = int(payload.get("steps", 10)), float(payload.get("delay", 0.05))
            completed = 0
            for i in range(steps):
                time.sleep(delay)
                completed = i + 1
                if streaming and self.rank == 0:
                    self.add_streaming_result({"step": completed})
                if self.should_stop():
                    break
            self.last_steps = {"completed": completed, "cancelled": self.cancelled}
            return dict(self.last_steps)
        if op == "last_steps":
            return self.last_steps
        if op in ("raise", "hang", "exit", "kill", "alloc"):
            return self._misbehave(op, on_rank, payload)
        if op == "print":
            message = payload.get("message", "")
            print(message, flush=True)
            print(message, file=sys.stderr, flush=True)
            logger.warning("%s", message)
            return None
        raise ValueError(f"ProbeWorker: unknown op {op!r}")

    def _misbehave(self, op: str, on_rank: int | None, payload: dict[str, Any]) -> Any:
        if not self._targeted(on_rank):
            if payload.get("peers") != "return":
                self._wait_in_collective()
            return {"rank": self.rank}
        if op == "raise":
            raise ValueError(payload.get("message", f"raised on purpose on rank {self.rank}"))
        if op == "hang":
            time.sleep(float(payload.get("seconds", 10**6)))
            return {"rank": self.rank}
        if op == "exit":
            os._exit(int(payload.get("code", 3)))
        if op == "kill":
            os.kill(os.getpid(), int(payload.get("signal", signal.SIGKILL)))
            time.sleep(10)
        block = bytearray(int(payload.get("bytes", 0)))
        return {"allocated": len(block)}

    def _deferred(self, delay: float, message: Any, fail: bool) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def finish() -> None:
            time.sleep(delay)
            if fail:
                future.set_exception(ValueError(f"deferred failure on rank {self.rank}"))
            else:
                future.set_result({"deferred": message, "rank": self.rank, "done_at": time.monotonic()})

        threading.Thread(target=finish, daemon=True).start()
        return future

    def _echo(self, message: Any) -> dict[str, Any]:
        cuda_device = None
        if self.device.type == "cuda":
            import torch

            cuda_device = torch.cuda.current_device()
        return {
            "echo": message,
            "rank": self.rank,
            "world_size": self.world_size,
            "device": str(self.device),
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "main_thread": threading.current_thread() is threading.main_thread(),
            "cuda_device": cuda_device,
        }


class _Rule:
    """One broken rule, as InvalidRequestError lists them."""

    def __init__(self, field: str, rule: str, message: str) -> None:
        self.field, self.rule, self.message = field, rule, message


class BatchProbeWorker(ProbeWorker):
    """A ProbeWorker whose requests with the same ``batch`` value merge; see the module docstring.

    ``setup(batch_sizes=...)`` declares :attr:`~gridgen.DistributedWorker.batch_sizes`.
    """

    def setup(self, batch_sizes: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        super().setup(**kwargs)
        self.batch_sizes = batch_sizes

    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> Any:
        if payload.get("reject"):
            raise InvalidRequestError([_Rule("reject", "rejected", "rejected on purpose by batch_key")])
        return payload.get("batch")

    @classmethod
    def batch_units(cls, payload: dict[str, Any], world_size: int) -> int:
        return int(payload.get("units", 1))

    def run_batch(self, batch: Batch) -> list[Any]:
        self.calls += 1
        ids = [item.request_id for item in batch]
        for item in batch:
            if item.payload.get("op") == "raise" and self._targeted(item.payload.get("on_rank")):
                raise ValueError(f"request {item.request_id} raised on purpose on rank {self.rank}")
        steps = max(int(item.payload.get("steps", 0)) for item in batch)
        delay = max(float(item.payload.get("delay", 0.01)) for item in batch)
        completed = [0] * len(batch)
        flags = [False] * len(batch)
        for step in range(steps):
            time.sleep(delay)
            flags = batch.cancelled()  # collective: every rank calls it at the same steps
            if all(flags):
                break
            for i, item in enumerate(batch):
                if not flags[i] and step < int(item.payload.get("steps", 0)):
                    completed[i] += 1
                    if self.rank == 0:
                        item.add_streaming_result({"step": completed[i], "request_id": item.request_id})
        return [
            {
                "request_id": item.request_id,
                "message": item.payload.get("message"),
                "batch": ids,
                "completed": completed[i],
                "cancelled": flags,
            }
            for i, item in enumerate(batch)
        ]
