"""``SDXLWorker``: data-parallel SDXL, one process per GPU, images gathered into a grid on rank 0.

A request for ``N`` images on ``W`` ranks runs like this on every rank:

1. **Validate** the payload (:func:`~gridgen.sdxl.request.validate_request`). Every rank
   does it before any GPU work, so a bad request raises the same error everywhere and no
   rank waits in a collective for one that gave up.
2. **Agree on the seed.** With no ``seed`` in the request, rank 0 draws one below 2**53
   (exact as a JSON number) and broadcasts it.
3. **Split the work, strided:** image ``i`` is made by rank ``i % W``, so rank ``r`` makes
   ``r, r + W, r + 2W, ...``. Shares differ by at most one; with ``N < W`` the last ranks
   have none. Each rank runs its share as **one batch** through the pipeline, image ``i``
   with its own ``torch.Generator`` seeded ``seed + i``: an image depends on
   ``(seed, i)`` only, never on ``W`` or on which rank made it.
4. **Denoise.** After every step, the step callback calls the collective
   :meth:`~gridgen.DistributedWorker.should_stop` (every rank, every step, same order);
   at every ``preview_every``-th step, when streaming, every rank previews its latents,
   the previews are gathered to rank 0 and rank 0 streams one preview grid. A rank with
   no image does not run the pipeline but walks the same step loop, so it joins exactly
   the same collectives.
5. **Decode** the latents with the VAE on the device and convert to uint8 there.
6. **Gather** the uint8 batches to rank 0 with ``dist.gather``, each padded to the largest
   share; rank 0 puts the images back in index order.
7. **Grid and encode** on rank 0 (:func:`~gridgen.make_grid`, then ``image_format``).

Cancelling: when ``should_stop()`` turns True at a step, every rank sets diffusers'
``pipeline._interrupt`` (the remaining steps are skipped, with no more collectives) and
raises :class:`~gridgen.Cancelled` together; nothing is kept between requests.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import Cancelled
from ..grid import make_grid
from ..worker import DistributedWorker
from .encoding import OutputEncoder
from .fast import (
    CompileRegions,
    OptimizeMode,
    load_compile_cache,
    optimize_pipeline,
    save_compile_cache,
)
from .models import DEFAULT_MODEL, load_pipeline, load_preview_decoder, resolve_dtype
from .preview import LinearPreview, Previewer, TaesdPreview, to_uint8
from .request import GenerateRequest, validate_request

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

__all__ = ["PreviewMode", "SDXLWorker"]

PreviewMode = Literal["auto", "taesd", "linear"] | None

_RANDOM_SEED_BOUND = 2**53  # random seeds stay exact in JSON/JavaScript numbers
_ENCODE_QUALITY = 90  # jpeg / webp
COMPILE_CACHE_ENV = "GRIDGEN_COMPILE_CACHE"
"""Environment variable: the default of ``setup(compile_cache=...)``."""


@dataclass
class _Run:
    """State of the request being run; a fresh one per request, so nothing leaks between them."""

    request: GenerateRequest
    streaming: bool
    total_steps: int
    max_share: int
    latent_size: tuple[int, int]
    stopped: bool = False


class SDXLWorker(DistributedWorker):
    """Stable Diffusion XL, data parallel: every rank makes its share of the images.

    Use it with a runner::

        async with DistributedRunner(SDXLWorker, world_size=2) as runner:   # start(model=...)
            result = await runner.invoke({"prompt": "a cat", "num_images": 4})

    or directly, on one device, without a runner::

        worker = SDXLWorker()
        worker.setup(model="tiny")
        result = worker(prompt="a cat", width=64, height=64, num_inference_steps=4)

    Payload fields are those of :class:`~gridgen.sdxl.GenerateRequest`. Rank 0 returns::

        {
            "grid": EncodedImage,           # when output is "grid" or "both"
            "images": [EncodedImage, ...],  # when output is "images" or "both", index order
            "seeds": [seed, seed + 1, ...], # the seed of each image
            "width": int, "height": int, "num_images": int,
            "timings": {"setup", "denoise", "decode", "gather", "encode", "total"},  # seconds
        }

    ``EncodedImage`` (from ``gridgen._codec``) holds ``data`` (bytes) and ``format``
    (``"png"``, ``"jpeg"`` or ``"webp"``). The other ranks return ``{}``. Streaming with
    ``preview_every > 0`` sends ``{"step", "total_steps", "progress", "preview_image"}``
    items from rank 0, ``preview_image`` being a PIL image of the preview grid (left out
    when the worker was set up with ``preview=None``).
    """

    pipeline: Any
    """The ``StableDiffusionXLPipeline`` (typed ``Any``: diffusers registers its parts at run time)."""
    previewer: Previewer | None
    dtype: torch.dtype
    model: str
    decode_batch_size: int = 4
    """Images decoded by the VAE at a time (bounds decode memory at large sizes)."""

    # -- setup ------------------------------------------------------------------------

    def setup(  # type: ignore[override]
        self,
        model: str = DEFAULT_MODEL,
        dtype: torch.dtype | str | None = None,
        preview: PreviewMode = "auto",
        preview_model: str | None = None,
        optimize: OptimizeMode = "auto",
        warmup: Sequence[int] = (),
        warmup_size: tuple[int, int] = (1024, 1024),
        defer_encoding: bool | None = None,
        compile_regions: CompileRegions = "transformers",
        text_encoder_graphs: bool = True,
        compile_cache: str | os.PathLike[str] | None = None,
        encode_threads: int | None = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        """Load the pipeline (and the preview decoder) onto ``self.device``.

        Args:
            model: a hub id, a local folder, ``"tiny"`` (built-in tiny random model, no
                download) or ``"sdxl-random"`` (full-size architecture, random weights).
            dtype: ``None`` = float16 on CUDA, float32 on CPU; or a dtype / ``"bf16"`` etc.
            preview: ``"auto"`` (TAESD when ``preview_model`` is given, else linear),
                ``"taesd"`` (an ``AutoencoderTiny``; ``preview_model`` defaults to
                ``madebyollin/taesdxl``, or the tiny model's own decoder for ``model="tiny"``),
                ``"linear"`` (no weights) or ``None`` (progress events without images).
            preview_model: hub id or folder of an ``AutoencoderTiny``.
            optimize: ``"auto"`` (CUDA graphs, fused QKV and a 16-bit VAE on CUDA; nothing
                on CPU), ``"graphs"``, ``"compile"`` (adds regional ``torch.compile``: fastest,
                but each new batch/size shape compiles for about a minute on first use) or
                ``"none"``. See :mod:`gridgen.sdxl.fast` for the measurements.
            warmup: images per rank to run once at setup (2 steps at ``warmup_size``), so the
                CUDA graphs and compiled kernels of the shapes you serve exist before the
                first request, e.g. ``warmup=(1, 4)``.
            warmup_size: ``(width, height)`` of the warm-up requests.
            defer_encoding: encode images in a background thread on rank 0 so the next
                request starts on the GPU meanwhile. ``None``: when run by a runner.
            compile_regions: what ``optimize="compile"`` compiles (see
                :data:`~gridgen.sdxl.fast.CompileRegions`); ``"transformers"`` measured fastest.
            text_encoder_graphs: CUDA-graph the two text encoders (CUDA only; eager on failure).
            compile_cache: a file of compiled artifacts (``torch.compiler`` mega-cache). If it
                exists it is loaded before anything compiles, so a fresh machine skips the
                compiling; if not, rank 0 writes it after the warm-up. Copy it to machines
                with the same GPU kind, torch and gridgen versions. Default: the
                ``GRIDGEN_COMPILE_CACHE`` environment variable, else no cache file.
            encode_threads: threads that compress one PNG in parallel slices on rank 0
                (``None``: up to 8, one per core; ``0`` or ``1``: one slice, no threads).
            **from_pretrained_kwargs: passed to ``StableDiffusionXLPipeline.from_pretrained``.

        Raises:
            ModelNotFoundError: the model or preview model cannot be found (the message
                says how to fix it).
            ValueError: a bad ``preview`` or ``dtype``.
        """
        import torch

        started = time.perf_counter()
        if preview not in ("auto", "taesd", "linear", None):
            raise ValueError(f"preview must be 'auto', 'taesd', 'linear' or None, got {preview!r}")
        if self.world_size > 1 and not _dist_ready():
            raise RuntimeError(
                f"world_size is {self.world_size} but torch.distributed is not initialised: "
                "run the worker under gridgen.DistributedRunner (or init_process_group first)"
            )
        _thread_lock_for_progress_bars()
        self.model = model
        self.dtype = resolve_dtype(dtype, self.device)
        self.pipeline = load_pipeline(
            model, device=self.device, dtype=self.dtype, **from_pretrained_kwargs
        )
        self.pipeline.set_progress_bar_config(disable=True)
        self.graphed_unet = optimize_pipeline(
            self.pipeline, optimize, self.device,
            regions=compile_regions, text_encoder_graphs=text_encoder_graphs,
        )
        if compile_cache is None:
            compile_cache = os.environ.get(COMPILE_CACHE_ENV) or None
        cache_loaded = compile_cache is not None and load_compile_cache(compile_cache)
        vae = self.pipeline.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16; diffusers upcasts it on every call and casts it
            # back. Keep it in float32 once instead (84 M parameters).
            vae.to(dtype=torch.float32)
        if self.graphed_unet is not None:
            self.decode_batch_size = 8  # measured best for the 16-bit (compiled) VAE
        self.defer_encoding = self._distributed if defer_encoding is None else defer_encoding
        self._output_encoder = OutputEncoder(encode_threads) if self.rank == 0 else None
        self._encoder_pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gridgen-encode")
            if self.defer_encoding and self.rank == 0
            else None
        )
        if preview == "auto":
            preview = "taesd" if preview_model is not None else "linear"
        if preview == "taesd":
            decoder = load_preview_decoder(
                preview_model, model=model, device=self.device, dtype=self.dtype
            )
            self.previewer = TaesdPreview(decoder)
        elif preview == "linear":
            self.previewer = LinearPreview()
        else:
            self.previewer = None
        width, height = warmup_size
        for per_rank in warmup:
            # Every rank runs the same warm-up in lockstep (the gathers are collectives).
            warm = self(
                prompt="warm-up", num_images=per_rank * self.world_size, width=width, height=height,
                num_inference_steps=2, seed=0, preview_every=0,
            )
            if isinstance(warm, concurrent.futures.Future):
                warm.result()
        if compile_cache is not None and not cache_loaded and self.rank == 0:
            save_compile_cache(compile_cache)
        self.setup_seconds = time.perf_counter() - started

    def teardown(self) -> None:
        """Let a deferred encoding finish, then stop the encoder thread."""
        pool = getattr(self, "_encoder_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        encoder = getattr(self, "_output_encoder", None)
        if encoder is not None:
            encoder.close()

    # -- one request --------------------------------------------------------------------

    def __call__(
        self, streaming: bool = False, **payload: Any
    ) -> dict[str, Any] | concurrent.futures.Future[dict[str, Any]]:
        """Generate the request's images; rank 0 returns the result dict, other ranks ``{}``.

        With ``defer_encoding``, rank 0 returns a future of the result dict: the grid and
        the images are encoded in a background thread while the next request runs.
        """
        started = time.perf_counter()
        request = validate_request(payload, self.world_size)  # same verdict on every rank
        n = request.num_images
        assert n is not None
        seed = self._agree_on_seed(request.seed)
        mine = self.indices_of(self.rank, n, self.world_size)
        scale = self.pipeline.vae_scale_factor
        run = _Run(
            request=request,
            streaming=streaming,
            total_steps=self._count_steps(request.num_inference_steps),
            max_share=math.ceil(n / self.world_size),
            latent_size=(request.height // scale, request.width // scale),
        )

        # 4. denoise (my share as one batch; a rank without images walks the same steps)
        latents = self._denoise(run, mine, seed)
        if run.stopped:  # every rank saw the same should_stop() answer at the same step
            raise Cancelled(f"request cancelled at step {self._stopped_at} (rank {self.rank})")
        self._sync()
        denoised = time.perf_counter()

        # 5. decode on the device, to uint8
        pixels = self._decode(latents, request)
        self._sync()
        decoded = time.perf_counter()

        # 6. gather to rank 0
        gathered = self._gather(pixels, run.max_share)
        gather_done = time.perf_counter()
        if gathered is None:
            return {}

        # 7. grid and encode (rank 0), in the background when deferred
        images = self._pixels_in_index_order(gathered, n)
        encoder = self._output_encoder
        assert encoder is not None  # rank 0
        setup_seconds = getattr(self, "setup_seconds", 0.0)

        def finish() -> dict[str, Any]:
            result: dict[str, Any] = {
                "seeds": [seed + i for i in range(n)],
                "width": request.width,
                "height": request.height,
                "num_images": n,
            }
            result.update(
                encoder.encode_outputs(images, request.output, request.image_format, _ENCODE_QUALITY)
            )
            finished = time.perf_counter()
            result["timings"] = {
                "setup": round(setup_seconds, 6),
                "denoise": round(denoised - started, 6),
                "decode": round(decoded - denoised, 6),
                "gather": round(gather_done - decoded, 6),
                "encode": round(finished - gather_done, 6),
                "total": round(finished - started, 6),
            }
            return result

        if self._encoder_pool is not None:
            return self._encoder_pool.submit(finish)
        return finish()

    # -- the steps, in order ---------------------------------------------------------------

    @staticmethod
    def indices_of(rank: int, num_images: int, world_size: int) -> list[int]:
        """The images rank ``rank`` makes: ``rank, rank + W, rank + 2W, ...`` below ``num_images``."""
        return list(range(rank, num_images, world_size))

    def _agree_on_seed(self, seed: int | None) -> int:
        if seed is not None:
            return seed
        drawn = secrets.randbelow(_RANDOM_SEED_BOUND)
        if not self._collective():
            return drawn
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(
            [drawn if self.rank == 0 else 0], dtype=torch.int64, device=self.device
        )
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def _count_steps(self, num_inference_steps: int) -> int:
        """How many times the pipeline's step callback will run: identical on every rank."""
        scheduler = self.pipeline.scheduler
        key = (id(scheduler), num_inference_steps)
        counts: dict[tuple[int, int], int] = self.__dict__.setdefault("_step_counts", {})
        if key not in counts:  # building a scheduler per request costs ~1 ms of host time
            probe = type(scheduler).from_config(scheduler.config)
            probe.set_timesteps(num_inference_steps, device="cpu")
            counts[key] = len(probe.timesteps)
        return counts[key]

    def _denoise(self, run: _Run, mine: list[int], seed: int) -> torch.Tensor | None:
        self._stopped_at: int | None = None
        if not mine:
            for step in range(run.total_steps):
                self._after_step(run, step, None)
                if run.stopped:
                    break
            return None
        import torch

        request = run.request

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            self._after_step(run, step, tensors["latents"])
            if run.stopped:
                pipeline._interrupt = True  # diffusers skips the remaining steps
            return tensors

        output = self.pipeline(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=len(mine),
            generator=[torch.Generator(self.device).manual_seed(seed + i) for i in mine],
            output_type="latent",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        latents: torch.Tensor = output.images
        return latents

    def _after_step(self, run: _Run, step: int, latents: torch.Tensor | None) -> None:
        """Runs after denoising step ``step`` (0-based) on every rank, in lockstep."""
        if self.should_stop():  # collective: the same answer on every rank
            run.stopped = True
            self._stopped_at = step + 1
            return
        done = step + 1
        every = run.request.preview_every
        if not run.streaming or every <= 0 or done % every != 0:
            return
        event: dict[str, Any] = {
            "step": done,
            "total_steps": run.total_steps,
            "progress": done / run.total_steps,
        }
        if self.previewer is not None:
            grid = self._preview_grid(run, latents)
            if grid is None:
                return  # not rank 0
            event["preview_image"] = grid
        elif self.rank != 0:
            return
        self.add_streaming_result(event)

    def _preview_grid(self, run: _Run, latents: torch.Tensor | None) -> Image.Image | None:
        assert self.previewer is not None
        import torch

        height, width = self.previewer.size(*run.latent_size)
        if latents is None:
            previews = torch.zeros((0, 3, height, width), dtype=torch.uint8, device=self.device)
        else:
            previews = self.previewer(latents)
        gathered = self._gather(previews, run.max_share)
        if gathered is None:
            return None
        n = run.request.num_images
        assert n is not None
        return make_grid(self._in_index_order(gathered, n))

    def _decode(self, latents: torch.Tensor | None, request: GenerateRequest) -> torch.Tensor:
        """VAE-decode on the device (as diffusers' SDXL pipeline does) and convert to uint8 there."""
        import torch

        if latents is None:
            return torch.zeros(
                (0, 3, request.height, request.width), dtype=torch.uint8, device=self.device
            )
        vae = self.pipeline.vae
        config = vae.config
        latents = latents.to(device=self.device, dtype=vae.dtype)
        mean = getattr(config, "latents_mean", None)
        std = getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / config.scaling_factor + mean_t
        else:
            latents = latents / config.scaling_factor
        chunks = []
        with torch.inference_mode():
            for start in range(0, latents.shape[0], self.decode_batch_size):
                chunk = latents[start : start + self.decode_batch_size]
                chunks.append(to_uint8(vae.decode(chunk, return_dict=False)[0]))
        return torch.cat(chunks)

    def _gather(self, batch: torch.Tensor, max_share: int) -> list[torch.Tensor] | None:
        """Gather every rank's uint8 batch (padded to ``max_share``) to rank 0.

        Returns one tensor per rank on rank 0 (still padded), ``None`` on other ranks.
        Every rank must call it, those with an empty batch too.
        """
        import torch

        padded = torch.zeros((max_share, *batch.shape[1:]), dtype=torch.uint8, device=self.device)
        padded[: batch.shape[0]] = batch
        if not self._collective():
            return [padded]
        import torch.distributed as dist

        slots = (
            [torch.empty_like(padded) for _ in range(self.world_size)] if self.rank == 0 else None
        )
        dist.gather(padded, slots, dst=0)
        return slots

    def _pixels_in_index_order(self, gathered: list[torch.Tensor], n: int) -> np.ndarray[Any, Any]:
        """Like :meth:`_in_index_order`, as one ``(n, H, W, 3)`` uint8 array (made HWC on the device)."""
        import torch

        world = len(gathered)
        array = torch.stack(gathered).permute(0, 1, 3, 4, 2).contiguous().cpu().numpy()
        if world == 1:
            return array[0, :n]
        order = range(n)
        return array[[i % world for i in order], [i // world for i in order]]

    def _in_index_order(self, gathered: list[torch.Tensor], n: int) -> list[Image.Image]:
        """Undo the strided split: image ``i`` is row ``i // W`` of rank ``i % W``'s batch."""
        import torch
        from PIL import Image

        world = len(gathered)
        stacked = torch.stack(gathered).cpu()  # (W, max_share, 3, H, W), one copy
        array = stacked.permute(0, 1, 3, 4, 2).numpy()
        return [Image.fromarray(array[i % world, i // world]) for i in range(n)]

    # -- helpers -------------------------------------------------------------------------

    def _collective(self) -> bool:
        return self.world_size > 1 and _dist_ready()

    def _sync(self) -> None:
        """Wait for the device, so that timings measure work rather than kernel launches."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


def _thread_lock_for_progress_bars() -> None:
    """Give tqdm (which diffusers uses while loading) a thread lock, not its default
    multiprocessing one: that one is a named semaphore in /dev/shm that outlives the worker
    (which leaves with os._exit) until the host exits, two more at every group restart."""
    import threading

    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())


def _dist_ready() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())

