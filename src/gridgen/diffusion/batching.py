"""Planning a merged batch: which request may join which, who makes which image, and
which batch sizes are already warm.

Bookkeeping and tensor plumbing; the worker (:mod:`gridgen.diffusion.worker`) runs the model.

**Global image index.** The images of the merged requests are numbered in batch order:
request 0's images ``0 .. n0-1``, then request 1's, and so on. Image ``g`` is made by rank
``g % W`` as row ``g // W`` of that rank's batch (the same strided split a single request
always had), with the seed ``seed + i`` of its own request, so what it looks like never
depends on its neighbours or on ``W``.

**Padding to warm sizes.** With CUDA graphs (``optimize="graphs"``) each new batch shape is
captured on first use (about a second); with ``optimize="compile"`` it is compiled (30 to
60 s). Merged requests make per-rank batch sizes that a single request would not, so the
worker pads its batch up to the smallest size already run at that image size (the
``setup(warmup=...)`` sizes, and every size served since); padded rows repeat the first
image and are thrown away. The cost: a padded row costs what a real image costs in the
UNet (its share of each step; at batch 1 to 8 on an H200 a step is only partly
proportional to the batch, see ``bench/README.md``), nothing in the VAE (decode chunks are
cut from warm sizes instead) and nothing in encoding. A batch larger than every warm size
runs at its own size (captured or compiled then, warm afterwards): warm up to
``max_batch_units / W`` images per rank to never pay that at request time.
"""

from __future__ import annotations

import concurrent.futures
import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._batch import Batch, BatchItem
from ..errors import Cancelled

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = [
    "RANDOM_SEED_BOUND",
    "SHRINKABLE_SCHEDULERS",
    "STEP_TENSORS",
    "BatchPlan",
    "BatchRun",
    "Marks",
    "OneRequest",
    "Slot",
    "WarmSizes",
    "agree_on_seeds",
    "cancelled_result",
    "drop_cancelled",
    "pixels_of",
    "stack_gathered",
    "to_pil",
]


@dataclass(frozen=True)
class Slot:
    """One image of a merged batch."""

    index: int
    """Global image index (see the module docstring)."""
    request: int
    """Index of its request in the batch."""
    image: int
    """Index within its request (``i`` of ``seed + i``)."""
    seed: int
    """Its generator's seed: the request's seed + ``image``."""


class BatchPlan:
    """The images of merged requests, spread over ``world_size`` ranks (strided)."""

    def __init__(self, counts: Sequence[int], seeds: Sequence[int], world_size: int) -> None:
        if len(counts) != len(seeds):
            raise ValueError("one seed per request")
        self.world_size = world_size
        self.slots: list[Slot] = []
        self.offsets: list[int] = []
        for request, (count, seed) in enumerate(zip(counts, seeds, strict=True)):
            self.offsets.append(len(self.slots))
            self.slots.extend(
                Slot(len(self.slots) + i, request, i, seed + i) for i in range(count)
            )
        self.counts = list(counts)
        self.total = len(self.slots)
        self.max_share = math.ceil(self.total / world_size)
        """Largest per-rank share: every gather is padded to it."""

    def share(self, rank: int) -> list[Slot]:
        """The images rank ``rank`` makes, as its batch rows ``0, 1, ...``."""
        return self.slots[rank :: self.world_size]

    def indices(self, request: int) -> range:
        """Global indices of request ``request``'s images, in order."""
        start = self.offsets[request]
        return range(start, start + self.counts[request])

    def place(self, index: int) -> tuple[int, int]:
        """``(rank, row)`` of global image ``index``."""
        return index % self.world_size, index // self.world_size


class WarmSizes:
    """Batch sizes already run per ``(kind, width, height)``: their graphs and kernels exist."""

    def __init__(self) -> None:
        self._sizes: dict[tuple[str, int, int], set[int]] = {}
        self.new = 0  # sizes added since the last result: graph captures or compiles

    def add(self, kind: str, size: tuple[int, int], batch: int) -> None:
        sizes = self._sizes.setdefault((kind, *size), set())
        self.new += batch not in sizes
        sizes.add(batch)

    def sizes(self, kind: str, size: tuple[int, int]) -> list[int]:
        return sorted(self._sizes.get((kind, *size), ()))

    def pad(self, kind: str, size: tuple[int, int], batch: int) -> int:
        """The smallest warm batch size >= ``batch``, else ``batch`` itself."""
        return next((warm for warm in self.sizes(kind, size) if warm >= batch), batch)

    def chunks(self, kind: str, size: tuple[int, int], count: int, limit: int) -> list[int]:
        """Cut ``count`` rows into calls of at most ``limit`` rows, of warm sizes where possible.

        Greedy: the largest warm size that fits, then the rest; a remainder smaller than
        every warm size is padded up to the smallest one (the last entry may then exceed
        what is left: the caller pads those rows). With nothing warm: plain ``limit`` chunks.
        """
        warm = [w for w in self.sizes(kind, size) if w <= limit]
        out: list[int] = []
        left = count
        while left > 0:
            fitting = [w for w in warm if w <= left]
            if fitting:
                out.append(max(fitting))
            elif warm:
                out.append(min(warm))
            else:
                out.append(min(left, limit))
            left -= out[-1]
        return out


RANDOM_SEED_BOUND = 2**53
"""Random seeds stay below it: exact as JSON (JavaScript) numbers."""

SHRINKABLE_SCHEDULERS = frozenset(
    {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler", "DDPMScheduler"}
)
"""Schedulers that keep no per-image state between steps, so rows can leave the batch.
(Multistep ones, e.g. DPM-Solver++ and UniPC, keep earlier model outputs per row.)"""

STEP_TENSORS = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")
"""The pipeline's per-row tensors that the step callback receives (and may shrink)."""


@dataclass
class BatchRun:
    """One rank's state of one merged batch; a fresh one per call, so nothing leaks."""

    batch: Batch
    requests: list[Any]
    """The validated requests, of the worker's family's model."""
    plan: BatchPlan
    mine: list[Slot]
    """This rank's images; ``mine[j]`` is its batch row ``j``."""
    total_steps: int
    cancelled: list[bool] = field(default_factory=list)
    """Per request, the last collective answer of ``batch.cancelled()``."""
    rows: list[int] = field(default_factory=list)
    """Which of ``mine`` the pipeline's batch holds now, in order (padding rows follow)."""
    steps_done: int = 0
    step_cache: dict[str, int] | None = None
    """This rank's ``{"steps", "skipped"}`` when the step cache is on."""

    def __post_init__(self) -> None:
        self.cancelled = [False] * len(self.requests)
        self.rows = list(range(len(self.mine)))

    def previews_due(self, step: int) -> list[int]:
        """Requests that get a preview after ``step`` (1-based): streaming, not cancelled,
        and ``step`` a multiple of their ``preview_every``."""
        return [
            k
            for k, (item, request) in enumerate(zip(self.batch, self.requests, strict=True))
            if item.streaming and not self.cancelled[k]
            and request.preview_every > 0 and step % request.preview_every == 0
        ]

    def live_positions(self) -> list[int]:
        """Positions in the pipeline's batch of the rows whose request is not cancelled."""
        return [p for p, j in enumerate(self.rows) if not self.cancelled[self.mine[j].request]]


def drop_cancelled(
    run: BatchRun, tensors: dict[str, Any], generators: list[Any]
) -> dict[str, Any]:
    """Shrink the pipeline's batch to the rows still wanted (eager path only).

    With classifier-free guidance the conditioning tensors hold ``[negative; positive]``
    (twice the latents' rows), so a row is kept in both halves. The generator list is the
    one the pipeline handed its scheduler: it shrinks in place, so each remaining row keeps
    its own generator.
    """
    import torch

    live = run.live_positions()
    if len(live) == tensors["latents"].shape[0]:
        return tensors
    rows = tensors["latents"].shape[0]
    keep = torch.tensor(live, device=tensors["latents"].device)
    out: dict[str, Any] = {}
    for name, tensor in tensors.items():
        index = keep if tensor.shape[0] == rows else torch.cat([keep, keep + rows])
        out[name] = tensor[index]
    generators[:] = [generators[p] for p in live]
    run.rows = [run.rows[p] for p in live]
    return out


def stack_gathered(gathered: Sequence[torch.Tensor]) -> np.ndarray[Any, Any]:
    """Rank 0's gathered uint8 batches as one host array ``(W, rows, H, W, 3)``, copied once
    (made channels-last on the device, so the host gets contiguous rows to encode)."""
    import torch

    return torch.stack(list(gathered)).permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()


def to_pil(stacked: np.ndarray[Any, Any], indices: Iterable[int]) -> list[Image.Image]:
    """Images ``indices`` of a :func:`stack_gathered` array as PIL images (previews)."""
    from PIL import Image

    return [Image.fromarray(row) for row in pixels_of(stacked, indices)]


def pixels_of(stacked: np.ndarray[Any, Any], indices: Iterable[int]) -> np.ndarray[Any, Any]:
    """Images ``indices`` of a :func:`stack_gathered` array as one ``(n, H, W, 3)`` array:
    image ``g`` is row ``g // W`` of rank ``g % W``'s batch (the strided split)."""
    world = stacked.shape[0]
    order = list(indices)
    return stacked[[g % world for g in order], [g // world for g in order]]


class OneRequest(Batch):
    """A batch of one request whose cancellation is a collective ``should_stop()`` call
    (``SDXLWorker.__call__``: one request, cancelled the way a single request always was)."""

    def __init__(self, item: BatchItem, should_stop: Callable[[], bool]) -> None:
        super().__init__([item])
        self._stop = should_stop
        self._stopped = False

    def cancelled(self) -> list[bool]:
        self._stopped = self._stopped or self._stop()
        return [self._stopped]


def agree_on_seeds(seeds: list[int | None], collective: bool, device: Any) -> list[int]:
    """Fill absent seeds with random ones drawn on rank 0 (one broadcast for all of them).

    Collective when ``collective``: every rank calls it with the same ``seeds``.
    """
    missing = [k for k, seed in enumerate(seeds) if seed is None]
    drawn = [secrets.randbelow(RANDOM_SEED_BOUND) for _ in missing]
    if missing and collective:
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(drawn, dtype=torch.int64, device=device)
        dist.broadcast(tensor, src=0)
        drawn = [int(value) for value in tensor.tolist()]
    filled = dict(zip(missing, drawn, strict=True))
    return [filled[k] if seed is None else seed for k, seed in enumerate(seeds)]


@dataclass(frozen=True)
class Marks:
    """When the shared phases of a batch ended (``time.perf_counter()``)."""

    started: float
    denoised: float
    decoded: float
    gathered: float


def cancelled_result(index: int) -> concurrent.futures.Future[Any]:
    """The result of request ``index``, cancelled while the rest of its batch ran on."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_exception(Cancelled(f"request {index} of the batch was cancelled"))
    return future
