"""The per-step, decode and gather work of :class:`~gridgen.diffusion.DiffusionWorker`, on
every rank, and rank 0's encoding of each request's result.

Split from the worker module to keep it readable; the order of collectives is the
worker's contract (every rank calls the same ones in the same order), see
:mod:`gridgen.diffusion.worker`.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any, ClassVar

from ..grid import make_grid
from ..worker import DistributedWorker
from .batching import BatchRun, Marks, WarmSizes, pixels_of, stack_gathered, to_pil
from .vae import decode_latents

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from .encoding import OutputEncoder
    from .families import Family
    from .parallel import ParallelGroups
    from .preview import Previewer

__all__ = ["RankSteps"]

_ENCODE_QUALITY = 90  # jpeg / webp


class RankSteps(DistributedWorker):
    """What one rank does after each denoising step, and to decode and gather its images."""

    pipeline: Any
    previewer: Previewer | None
    family: ClassVar[Family]
    warm: WarmSizes
    graphed_unet: Any
    graphed: list[Any]
    """The transformer families' CUDA-graph wrappers (:class:`~gridgen.diffusion.graphed.GraphedForward`)."""
    fixed_shapes: bool = False
    """Compiled or graphed: batch shapes are padded to warm sizes (see :class:`WarmSizes`)."""
    decode_batch_size: int = 4
    """Images decoded by the VAE at a time (bounds decode memory at large sizes)."""
    _output_encoder: OutputEncoder | None
    setup_seconds: float | None
    """Seconds the last ``setup`` took, until the first result after it reports them."""
    _encoder_pool: concurrent.futures.ThreadPoolExecutor | None
    grouping: ParallelGroups
    """This rank's group (see :mod:`gridgen.diffusion.parallel`)."""

    def _after_step(self, run: BatchRun, step: int, latents: torch.Tensor | None) -> None:
        """Runs after denoising step ``step`` (0-based) on every rank, in lockstep."""
        run.cancelled = run.batch.cancelled()  # collective: the same answer on every rank
        run.steps_done = step + 1
        if all(run.cancelled):
            return
        done = step + 1
        due = run.previews_due(done)
        if not due:
            return
        event: dict[str, Any] = {
            "step": done,
            "total_steps": run.total_steps,
            "progress": done / run.total_steps,
        }
        grids = self._preview_grids(run, latents, due) if self.previewer is not None else None
        if self.rank != 0:
            return
        for n, k in enumerate(due):
            extra = {} if grids is None else {"preview_image": grids[n]}
            run.batch[k].add_streaming_result({**event, **extra})

    def _preview_grids(
        self, run: BatchRun, latents: torch.Tensor | None, due: list[int]
    ) -> list[Image.Image] | None:
        """One preview grid per request in ``due`` on rank 0 (None elsewhere); collective."""
        assert self.previewer is not None
        import torch

        first = run.requests[0]
        scale = self.pipeline.vae_scale_factor
        height, width = self.previewer.size(first.height // scale, first.width // scale)
        previews = torch.zeros(
            (run.plan.max_share, 3, height, width), dtype=torch.uint8, device=self.device
        )
        if latents is not None and self.grouping.leader:
            wanted = set(due)
            positions = [
                p for p in run.live_positions() if run.mine[run.rows[p]].request in wanted
            ]
            if positions:
                rows = [run.rows[p] for p in positions]
                unpacked = self.family.unpack(self.pipeline, latents[positions], first)
                previews[rows] = self.previewer(unpacked)
        gathered = self._gather(previews, run.plan.max_share)
        if gathered is None:
            return None
        stacked = stack_gathered(gathered)
        return [make_grid(to_pil(stacked, run.plan.indices(k))) for k in due]

    def _decode_rows(self, run: BatchRun, latents: torch.Tensor | None) -> torch.Tensor:
        """This rank's images as uint8 rows (``max_share`` of them; cancelled rows stay zero)."""
        import torch

        first = run.requests[0]
        pixels = torch.zeros(
            (run.plan.max_share, 3, first.height, first.width),
            dtype=torch.uint8,
            device=self.device,
        )
        live = run.live_positions()
        if latents is not None and live and self.grouping.leader:  # a group's leader decodes
            pixels[[run.rows[p] for p in live]] = self._decode(latents[live], first)
        return pixels

    def _decode(self, latents: torch.Tensor, request: Any) -> torch.Tensor:
        """Decode to uint8 on the device; in warm batch sizes when the VAE is compiled or
        graphed (see :meth:`WarmSizes.chunks <gridgen.diffusion.batching.WarmSizes.chunks>`)."""
        size, count, limit = (request.width, request.height), latents.shape[0], self.decode_batch_size
        if not self.fixed_shapes:
            sizes = [min(limit, count - start) for start in range(0, count, limit)]
        else:
            sizes = self.warm.chunks("vae", size, count, limit)
        latents = self.family.unpack(self.pipeline, latents, request)
        pixels = decode_latents(self.pipeline.vae, latents.to(self.device), sizes)
        if self.fixed_shapes:
            for rows in sizes:
                self.warm.add("vae", size, rows)
        return pixels

    def _gather(self, batch: torch.Tensor, max_share: int) -> list[torch.Tensor] | None:
        """Gather every group leader's uint8 batch (padded to ``max_share``) to rank 0.

        Returns one tensor per group on rank 0 (still padded), ``None`` on other ranks.
        Every rank must call it, those with an empty batch too. Without ``parallel`` every
        rank leads its own group of one.
        """
        import torch

        if not self.grouping.leader:
            return None
        padded = torch.zeros((max_share, *batch.shape[1:]), dtype=torch.uint8, device=self.device)
        padded[: batch.shape[0]] = batch
        groups = self.grouping.groups
        if not self._collective() or groups == 1:
            return [padded]
        import torch.distributed as dist

        slots = [torch.empty_like(padded) for _ in range(groups)] if self.rank == 0 else None
        dist.gather(padded, slots, dst=0, group=self.grouping.data_group)
        return slots

    def _finish(
        self, run: BatchRun, k: int, stacked: np.ndarray[Any, Any], marks: Marks
    ) -> dict[str, Any] | concurrent.futures.Future[dict[str, Any]]:
        """Request ``k``'s result on rank 0: its grid and images, encoded (in the background
        when deferred). Its timings share the batch's denoise, decode and gather phases."""
        request, seed = run.requests[k], run.plan.slots[run.plan.offsets[k]].seed
        n = run.plan.counts[k]
        images = pixels_of(stacked, run.plan.indices(k))
        encoder = self._output_encoder
        assert encoder is not None  # rank 0
        setup_seconds = getattr(self, "setup_seconds", None)
        self.setup_seconds = None  # one-off: reported with the first result after setup only
        new_shapes, self.warm.new = self.warm.new, 0  # reported once, with the batch's first result
        text_encode = getattr(self, "text_encode_seconds", None)

        def finish() -> dict[str, Any]:
            encoding = time.perf_counter()
            result: dict[str, Any] = {
                "seeds": [seed + i for i in range(n)],
                "width": request.width,
                "height": request.height,
                "num_images": n,
                "new_shapes": new_shapes,
            }
            result.update(
                encoder.encode_outputs(images, request.output, request.image_format, _ENCODE_QUALITY)
            )
            finished = time.perf_counter()
            result["timings"] = {
                "setup": None if setup_seconds is None else round(setup_seconds, 6),
                "text_encode": None if text_encode is None else round(text_encode, 6),
                "denoise": round(marks.denoised - marks.started, 6),
                "decode": round(marks.decoded - marks.denoised, 6),
                "gather": round(marks.gathered - marks.decoded, 6),
                "encode": round(finished - encoding, 6),
                "total": round(finished - marks.started, 6),
            }
            if run.step_cache is not None:
                result["step_cache"] = dict(run.step_cache)  # rank 0's denoiser calls
            return result

        if self._encoder_pool is not None:
            return self._encoder_pool.submit(finish)
        return finish()

    # -- helpers -------------------------------------------------------------------------

    def _collective(self) -> bool:
        return self.world_size > 1 and _dist_ready()

    def _sync(self) -> None:
        """Wait for the device, so that timings measure work rather than kernel launches."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)



def _dist_ready() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())
