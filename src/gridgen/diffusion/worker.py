"""``DiffusionWorker``: a diffusers text-to-image pipeline, data parallel, one process per GPU,
images gathered into a grid on rank 0. What differs between pipeline families (SDXL,
FLUX.1, SD3.5) comes from the class's :class:`~gridgen.diffusion.families.Family`.

One call serves one request (``__call__``) or several merged ones (``run_batch``: same
size, steps and guidance; see :mod:`gridgen.diffusion.batching`). On every rank:

1. **Validate** each payload (the family's request model) before any
   GPU work, so a bad request raises the same error everywhere and no rank waits in a
   collective for one that gave up.
2. **Agree on seeds.** Rank 0 draws the missing ones below 2**53 (exact as JSON numbers)
   and broadcasts them.
3. **Split the work, strided:** all images of all requests are numbered in batch order
   and image ``g`` is made by rank ``g % W``. Each rank runs its share as **one batch**,
   every image with its request's prompt embeddings (each prompt encoded alone) and its
   own ``torch.Generator`` seeded ``seed + i``: an image depends on its request only,
   never on its neighbours, on ``W`` or on which rank made it.
4. **Denoise.** After every step, the step callback runs the collective
   ``batch.cancelled()`` (every rank, every step, same order); at a request's every
   ``preview_every``-th step, when it streams, the ranks preview its images, gather them
   to rank 0, and rank 0 streams that request its own preview grid. A rank with no image
   does not run the pipeline but walks the same steps, so it joins the same collectives.
5. **Decode** the latents with the VAE on the device, to uint8 there (FLUX's packed
   latents unpacked first).
6. **Gather** the uint8 batches to rank 0 with ``dist.gather``, each padded to the largest
   share; rank 0 puts every request's images back in order.
7. **Grid and encode** each request's images on rank 0.

Cancelling: a request cancelled mid-batch leaves the batch at the next step (eager path
of a family whose batch can shrink: its rows are dropped; otherwise they run on, unseen)
and is neither decoded nor delivered. When all are cancelled, every rank sets diffusers'
``pipeline._interrupt`` (the loop skips its remaining steps) and raises
:class:`~gridgen.Cancelled` together, before the VAE: diffusers would still decode after
an interrupt, so the worker always asks for latents and decodes them itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .._batch import Batch, BatchItem
from ..errors import Cancelled
from ._env import resolve_dtype
from .batching import (
    SHRINKABLE_SCHEDULERS,
    BatchPlan,
    BatchRun,
    Marks,
    OneRequest,
    WarmSizes,
    agree_on_seeds,
    cancelled_result,
    drop_cancelled,
    stack_gathered,
)
from .conditioning import ImageInputs, input_kind, input_merge_key, vae_dtype_kept
from .encoding import OutputEncoder
from .families import SDXL, Family
from .fast import CompileRegions, OptimizeMode, load_compile_cache, save_compile_cache
from .levers import apply_levers
from .lora import DEFAULT_MAX_LORA_BYTES, DEFAULT_MAX_LORAS, check_request_loras
from .lora_cache import LoraCache, LoraMode, apply_loras, check_lora_options, lora_warmup_sizes
from .lora_slots import DEFAULT_LORA_MAX_RANK, LoraLayers
from .lossy import CacheCounter, Quantize, check_lossy
from .models import load_family_pipeline, load_preview_decoder
from .parallel import CfgSplit, ParallelGroups, Parallelism, check_parallel, check_sequence_request
from .preview import Previewer, make_previewer
from .setup_checks import PreviewMode, check_setup, phase_clock, thread_lock_for_progress_bars
from .steps import RankSteps, _dist_ready

if TYPE_CHECKING:
    import torch

__all__ = ["DiffusionWorker", "PreviewMode"]


logger = logging.getLogger("gridgen.diffusion")
COMPILE_CACHE_ENV = "GRIDGEN_COMPILE_CACHE"
"""Environment variable: the default of ``setup(compile_cache=...)``."""


class DiffusionWorker(RankSteps):
    """A diffusers text-to-image pipeline, data parallel: every rank makes its share of the images.

    Use a family's subclass (:class:`~gridgen.sdxl.SDXLWorker`,
    :class:`~gridgen.diffusion.FluxWorker`, :class:`~gridgen.diffusion.FluxSchnellWorker`,
    :class:`~gridgen.diffusion.SD3Worker`), or :func:`~gridgen.diffusion.worker_for` to pick
    one from the model::

        worker_cls = worker_for("tiny-flux")
        async with DistributedRunner(worker_cls, world_size=2) as runner:   # start(model=...)
            result = await runner.invoke({"prompt": "a cat", "num_images": 4})

    The class fixes the family because :meth:`batch_key` validates payloads on the host,
    before any worker has loaded a model. Payload fields are those of the family's request
    model. Rank 0 returns::

        {
            "grid": EncodedImage,           # when output is "grid" or "both"
            "images": [EncodedImage, ...],  # when output is "images" or "both", index order
            "seeds": [seed, seed + 1, ...], # the seed of each image
            "width": int, "height": int, "num_images": int,
            "timings": {"setup", "denoise", "decode", "gather", "encode", "total"},  # seconds;
                                            # setup: on the first result after setup, else None
        }

    ``EncodedImage`` (from ``gridgen.images``) holds ``data`` (bytes) and ``format``
    (``"png"``, ``"jpeg"`` or ``"webp"``). The other ranks return ``{}``. Streaming with
    ``preview_every > 0`` sends ``{"step", "total_steps", "progress", "preview_image"}``
    items from rank 0, ``preview_image`` being a PIL image of the preview grid (left out
    when the worker was set up with ``preview=None``).
    """

    family: ClassVar[Family] = SDXL
    """What this worker class serves (see :mod:`gridgen.diffusion.families`)."""
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-xl-base-1.0"
    """The model ``setup()`` loads when given none."""

    pipeline: Any
    """The diffusers pipeline (typed ``Any``: diffusers registers its parts at run time)."""
    previewer: Previewer | None
    dtype: torch.dtype
    model: str
    _cache_counter: CacheCounter | None = None
    _offloaded = False
    lora_cache: LoraCache | None = None
    """This rank's loaded LoRA adapters (None: the service has no adapter sources)."""
    _cfg_split: CfgSplit | None = None
    # -- setup ------------------------------------------------------------------------

    # One piece: its docstring (57 lines) is the options' reference; the body runs in order: checks, load, warm-up.
    def setup(  # type: ignore[override]
        self,
        model: str | None = None,
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
        quantize: Quantize = None,
        step_cache: float | None = None,
        cpu_offload: bool = False,
        loras: Mapping[str, str | os.PathLike[str]] | None = None,
        lora_dir: str | os.PathLike[str] | None = None,
        max_loras: int = DEFAULT_MAX_LORAS,
        max_lora_bytes: int = DEFAULT_MAX_LORA_BYTES,
        lora_max_rank: int = DEFAULT_LORA_MAX_RANK,
        lora_layers: LoraLayers = "attention",
        lora_mode: LoraMode = "fuse",
        parallel: Mapping[str, int] | str | None = None,
        **from_pretrained_kwargs: Any,
    ) -> None:
        """Load the pipeline (and the preview decoder) onto ``self.device``.

        Args:
            model: a hub id, a local folder, or a built-in name of the family: ``"tiny"``,
                ``"tiny-flux"``, ``"tiny-sd3"`` (tiny random models, no download),
                ``"sdxl-random"``, ``"flux-random"``, ``"sd3-random"`` (full-size
                architectures, random weights). ``None``: :attr:`default_model`.
            dtype: ``None`` = float32 on CPU, else the family's ``cuda_dtype`` (float16 for
                SDXL, bfloat16 for FLUX.1 and SD3.5); or a dtype / ``"bf16"`` etc.
            preview: ``"auto"`` (TAESD when ``preview_model`` is given, else linear),
                ``"taesd"`` (an ``AutoencoderTiny`` of the family's latent space;
                ``preview_model`` defaults to ``madebyollin/taesdxl``, ``taef1`` (FLUX.1) or
                ``taesd3`` (SD3.5), or the tiny models' own decoder),
                ``"linear"`` (no weights) or ``None`` (progress events without images).
            preview_model: hub id or folder of an ``AutoencoderTiny``.
            optimize: ``"auto"`` (on CUDA: SDXL's CUDA graphs, fused QKV and a 16-bit VAE;
                FLUX.1's and SD3.5's fused QKV and text-encoder graphs; nothing on CPU),
                ``"graphs"``, ``"compile"`` (adds regional ``torch.compile``, and for FLUX.1
                and SD3.5 a CUDA graph of the compiled transformer: fastest, but each new
                batch/size shape compiles for about a minute on first use) or ``"none"``.
                See :mod:`gridgen.diffusion.fast` for the measurements.
            warmup: images per rank to run once at setup (2 steps at ``warmup_size``), so the
                CUDA graphs and compiled kernels of the shapes you serve exist before the
                first request, e.g. ``warmup=(1, 4)``. With ``optimize`` on, these sizes
                (times ``world_size``) become the worker's ``batch_sizes``: the runner then
                merges queued requests only into batches of those sizes.
            warmup_size: ``(width, height)`` of the warm-up requests.
            defer_encoding: encode images in a background thread on rank 0 so the next
                request starts on the GPU meanwhile. ``None``: when run by a runner.
            compile_regions: what ``optimize="compile"`` compiles (see
                :data:`~gridgen.diffusion.fast.CompileRegions`); ``"transformers"`` measured fastest.
            text_encoder_graphs: CUDA-graph the text encoders (CUDA only; eager on failure).
            compile_cache: a file of compiled artifacts (``torch.compiler`` mega-cache). If it
                exists it is loaded before anything compiles, so a fresh machine skips the
                compiling; if not, rank 0 writes it after the warm-up. Copy it to machines
                with the same GPU kind, torch and gridgen versions. Default: the
                ``GRIDGEN_COMPILE_CACHE`` environment variable, else no cache file.
            encode_threads: threads that compress one PNG in parallel slices on rank 0
                (``None``: up to 8, one per core; ``0`` or ``1``: one slice, no threads).
            quantize: ``"fp8"``: float8 weights and activations in the transformer's
                ``Linear`` layers (FLUX.1, SD3.5; needs ``optimize="compile"``, torchao and a
                GPU of compute capability 8.9+). Changes the images; see
                :mod:`gridgen.diffusion.lossy` and ``docs/flux.md`` for its accuracy.
            step_cache: diffusers' first-block cache with this threshold (0 to 1; FLUX.1,
                SD3.5): steps whose first block barely moved skip the rest. Changes the
                images; results then report ``step_cache: {"steps", "skipped"}``.
            cpu_offload: keep the text encoders and the VAE on the CPU, each on the GPU only while
                it runs (diffusers' model offload; the denoiser stays): about 5 GiB off FLUX.1-dev's
                peak; slower, and only with ``optimize="none"`` or, for FLUX.1 and SD3.5,
                ``"compile"``.
            loras / lora_dir: LoRA adapters requests may name: ``{"name": path}``, and a folder
                whose ``*.safetensors`` are adapters named by their stem (``docs/lora.md``).
            max_loras / max_lora_bytes: adapters each rank keeps loaded, least recently used
                unloaded first. lora_mode: with ``optimize`` on, ``"fuse"`` adds adapters into
                the weights (:mod:`gridgen.diffusion.lora_fusion`), ``"slot"`` runs them through
                a low-rank slot (:mod:`gridgen.diffusion.lora_slots`) of rank ``lora_max_rank``
                over ``lora_layers``: ``"attention"`` (the attention projections) or ``"all"``.
            parallel: split one image over a group of ranks, e.g. ``{"cfg": 2}`` (SDXL, SD3.5)
                or ``{"ulysses": 2}`` (FLUX.1); the groups then share the images (see
                :mod:`gridgen.diffusion.parallel` and ``docs/parallelism.md``).
            **from_pretrained_kwargs: passed to the pipeline class's ``from_pretrained``.

        Raises:
            ModelNotFoundError: the model or preview model cannot be found (the message
                says how to fix it).
            ValueError: a bad ``preview``, ``optimize`` or ``dtype``, or a model of
                another family.
        """
        import torch

        started = time.perf_counter()
        phases: dict[str, float] = {}
        mark = phase_clock(phases)
        if self.world_size > 1 and not _dist_ready():
            raise RuntimeError(
                f"world_size is {self.world_size} but torch.distributed is not initialised: "
                "run the worker under gridgen.DistributedRunner (or init_process_group first)"
            )
        model = self.default_model if model is None else model
        check_setup(type(self), model, self.device, preview, optimize, cpu_offload, preview_model)
        check_lossy(self.family, self.device, optimize, quantize, step_cache)
        sources = check_lora_options(
            loras, lora_dir, max_loras, max_lora_bytes, lora_max_rank, quantize, lora_layers, lora_mode
        )
        thread_lock_for_progress_bars()
        self.model = model
        self.dtype = resolve_dtype(dtype, self.device, self.family.cuda_dtype)
        self.parallel = Parallelism.parse(parallel)
        check_parallel(self.parallel, self.family, self.world_size, str(self.device), self.dtype, step_cache)
        self.pipeline = load_family_pipeline(
            self.family, model, device=self.device, dtype=self.dtype, **from_pretrained_kwargs
        )
        self.pipeline.set_progress_bar_config(disable=True)
        mark("load")
        levers = apply_levers(
            self.pipeline, self.family, self.device, optimize, compile_regions, text_encoder_graphs,
            quantize, step_cache, cpu_offload, sources, (max_loras, max_lora_bytes, lora_max_rank, lora_layers, lora_mode),
            sequence_parallel=self.parallel.sequence > 1,
        )
        self.graphed_unet, self.graphed, self.fixed_shapes = levers.graphed_unet, levers.graphed, levers.fixed_shapes
        self.lora_cache, self._cache_counter = levers.lora_cache, levers.cache_counter
        self._offloaded = cpu_offload
        if compile_cache is None:
            compile_cache = os.environ.get(COMPILE_CACHE_ENV) or None
        self.grouping = ParallelGroups.build(self.parallel, self.rank, self.world_size, self.device)
        self._cfg_split = self.grouping.apply(self.pipeline, self.family.denoiser)
        mark("optimize")
        cache_loaded = compile_cache is not None and load_compile_cache(compile_cache)
        mark("compile_cache_load")
        vae = self.pipeline.vae
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            # SDXL's VAE overflows in float16; diffusers upcasts it on every call and casts it
            # back. Keep it in float32 once instead (84 M parameters).
            vae.to(dtype=torch.float32)
        if self.fixed_shapes:
            self.decode_batch_size = 8  # measured best for the 16-bit (compiled) VAE
        self.defer_encoding = self._distributed if defer_encoding is None else defer_encoding
        self._output_encoder = OutputEncoder(encode_threads) if self.rank == 0 else None
        self._encoder_pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gridgen-encode")
            if self.defer_encoding and self.rank == 0
            else None
        )
        self.previewer = make_previewer(preview, preview_model, self.family.latent_rgb, lambda name: load_preview_decoder(
            name, model=model, device=self.device, dtype=self.dtype))
        mark("preview")
        width, height = warmup_size
        for per_rank in lora_warmup_sizes(warmup, self.lora_cache):
            # Every rank runs the same warm-up in lockstep (the gathers are collectives).
            warm = self(
                prompt="warm-up", num_images=per_rank * self.grouping.groups, width=width, height=height,
                num_inference_steps=2, seed=0, preview_every=0,
            )
            if isinstance(warm, concurrent.futures.Future):
                warm.result()
            mark(f"warmup_{per_rank}")
        if self.fixed_shapes and warmup:
            # A merge is padded up to a warm size (or compiles a new shape): let the runner
            # form only merges of warm sizes.
            self.batch_sizes = sorted({per_rank * self.grouping.groups for per_rank in warmup})
        if compile_cache is not None and not cache_loaded and self.rank == 0:
            save_compile_cache(compile_cache)
            mark("compile_cache_save")
        self.setup_seconds = time.perf_counter() - started
        self.setup_phases = phases
        """Seconds per phase of the last :meth:`setup` (``load``, ``optimize``,
        ``compile_cache_load``, ``preview``, ``warmup_<n>`` per warm-up size, ...)."""
        logger.info(
            "rank %d set up in %.1fs: %s", self.rank, self.setup_seconds,
            ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items()),
        )

    def teardown(self) -> None:
        """Let a deferred encoding finish, then stop the encoder thread."""
        pool = getattr(self, "_encoder_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        encoder = getattr(self, "_output_encoder", None)
        if encoder is not None:
            encoder.close()

    # -- requests -------------------------------------------------------------------------

    def __init__(self, rank: int = 0, world_size: int = 1, device: Any = "cpu") -> None:
        super().__init__(rank=rank, world_size=world_size, device=device)
        self.warm = WarmSizes()
        """Batch sizes already run per image size; merged batches are padded to them."""
        self.grouping = ParallelGroups(Parallelism(), rank, world_size)

    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> Hashable:
        """Requests of equal size, steps and guidance merge (see :meth:`Family.merge_key
        <gridgen.diffusion.families.Family.merge_key>`).

        Validates the payload first, so a bad request is rejected (with an
        :class:`~gridgen.InvalidRequestError` naming the field and the rule) before
        it is queued or merged.
        """
        return cls.family.merge_key(cls.family.validate(payload))

    @classmethod
    def check_payload(cls, payload: dict[str, Any], setup_kwargs: Mapping[str, Any]) -> None:
        """Refuse, before it is queued, a request naming adapters the service's sources do not
        hold (:func:`~gridgen.diffusion.lora.check_request_loras`)."""
        if payload.get("loras"):
            check_request_loras(cls.family.validate(payload), setup_kwargs)

    @classmethod
    def batch_units(cls, payload: dict[str, Any], world_size: int) -> int:
        """The request's ``num_images`` (default: ``world_size``)."""
        count = cls.family.validate(payload, world_size).num_images
        assert isinstance(count, int)
        return count

    def __call__(
        self, streaming: bool = False, **payload: Any
    ) -> dict[str, Any] | concurrent.futures.Future[dict[str, Any]]:
        """Generate one request's images; rank 0 returns the result dict, other ranks ``{}``.

        A batch of one (see :meth:`run_batch`), cancelled by the collective
        :meth:`~gridgen.DistributedWorker.should_stop`. With ``defer_encoding``, rank 0
        returns a future of the result dict: the grid and the images are encoded in a
        background thread while the next request runs.
        """
        item = BatchItem(
            index=0,
            request_id=self.request_id or 0,
            payload=payload,
            streaming=streaming,
            sink=self.add_streaming_result,
        )
        result: dict[str, Any] | concurrent.futures.Future[dict[str, Any]]
        result = self.run_batch(OneRequest(item, self.should_stop))[0]
        return result

    def run_batch(
        self, batch: Batch
    ) -> list[dict[str, Any] | concurrent.futures.Future[dict[str, Any]]]:
        """Generate the images of merged requests as one batch per rank.

        Returns one result per request (the dict :meth:`__call__` returns; a future of it
        with ``defer_encoding``) on rank 0, ``{}`` per request on the other ranks. A request
        cancelled while the others ran gets a future that raises
        :class:`~gridgen.Cancelled`. Raises :class:`~gridgen.Cancelled` when all are.

        Raises:
            InvalidRequestError: a payload is invalid (the same on every rank).
            ValueError: the requests have different :meth:`batch_key` values.
        """
        started = time.perf_counter()
        groups = self.grouping  # images are strided over the groups (each rank its own without parallel)
        requests = [self.family.validate(item.payload, groups.groups) for item in batch]
        for request in requests:
            check_sequence_request(groups.parallel, request)
        if len({self.family.merge_key(request) for request in requests}) > 1:
            raise ValueError("run_batch got requests with different batch_key values")
        seeds = agree_on_seeds([r.seed for r in requests], self._collective(), self.device)
        # Merged requests have the same adapters (they are part of the merge key).
        apply_loras(self.lora_cache, requests[0], self._collective(), self.rank, self.world_size, self.device)
        plan = BatchPlan([r.num_images or 0 for r in requests], seeds, groups.groups)
        run = BatchRun(batch, requests, plan, plan.share(groups.group), self._count_steps(requests))

        latents = self._denoise(run)  # my share as one batch; idle ranks walk the same steps
        if all(run.cancelled):  # every rank saw the same answer at the same step
            raise Cancelled(f"request cancelled at step {run.steps_done} (rank {self.rank})")
        self._sync()
        denoised = time.perf_counter()
        pixels = self._decode_rows(run, latents)
        self._sync()
        decoded = time.perf_counter()
        gathered = self._gather(pixels, plan.max_share)
        marks = Marks(started, denoised, decoded, time.perf_counter())
        if gathered is None:
            return [{} for _ in batch]
        stacked = stack_gathered(gathered)  # one device-to-host copy for every request
        return [
            cancelled_result(k) if run.cancelled[k] else self._finish(run, k, stacked, marks)
            for k in range(len(batch))
        ]

    # -- the steps, in order ---------------------------------------------------------------

    @staticmethod
    def indices_of(rank: int, num_images: int, world_size: int) -> list[int]:
        """The images rank ``rank`` makes: ``rank, rank + W, rank + 2W, ...`` below ``num_images``."""
        return list(range(rank, num_images, world_size))

    def _count_steps(self, requests: list[Any]) -> int:
        """How many times the pipeline's step callback will run: identical on every rank."""
        key = (id(self.pipeline.scheduler), requests[0].num_inference_steps, input_merge_key(requests[0]))
        counts: dict[Hashable, int] = self.__dict__.setdefault("_step_counts", {})
        if key not in counts:  # building a scheduler per request costs ~1 ms of host time
            counts[key] = self.family.count_steps(self.pipeline, requests[0])
        return counts[key]

    def _denoise(self, run: BatchRun) -> torch.Tensor | None:
        """This rank's latents (rows ``run.rows``), or None when it has none left to make."""
        latents = self._run_pipeline(run) if run.mine else None
        # A rank without images, or whose images were all cancelled, stopped its pipeline
        # early; it still joins the remaining per-step collectives of the others.
        for step in range(run.steps_done, run.total_steps):
            if all(run.cancelled):
                break
            self._after_step(run, step, None)
        return latents if run.live_positions() else None

    def _run_pipeline(self, run: BatchRun) -> torch.Tensor:
        import torch

        first = run.requests[0]
        if input_kind(first) is not None and run.total_steps == 0:  # strength 0: nothing to denoise
            return ImageInputs.of(self).start_latents(run.requests, [s.request for s in run.mine])
        size = (first.width, first.height)
        graphed = self.fixed_shapes
        rows = self.warm.pad("unet", size, len(run.mine)) if graphed else len(run.mine)
        slots = run.mine + [run.mine[0]] * (rows - len(run.mine))  # padding repeats row 0
        encoding = time.perf_counter()
        embeds = self.family.embeddings(self.pipeline, run.requests, slots, self.device)
        self._sync()
        self.text_encode_seconds = time.perf_counter() - encoding
        if self._offloaded:  # the text encoders leave before the denoiser's activations come
            self.pipeline.maybe_free_model_hooks()
        generators = [torch.Generator(self.device).manual_seed(slot.seed) for slot in slots]
        pipeline, extra = self.pipeline, {"width": first.width, "height": first.height}
        tensors = list(self.family.step_tensors)
        if input_kind(first) is not None:  # image-to-image or inpainting: a start image per row
            pipeline, extra = ImageInputs.of(self).call(run.requests, [slot.request for slot in slots], generators)
            tensors = ["latents"]  # their loops keep more per-row tensors: rows never leave
        shrink = (
            pipeline is self.pipeline
            and not graphed
            and self.family.shrinkable
            and type(self.pipeline.scheduler).__name__ in SHRINKABLE_SCHEDULERS
        )

        def on_step_end(
            pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            self._after_step(run, step, tensors["latents"])
            if not run.live_positions():
                pipeline._interrupt = True  # diffusers skips the remaining steps
                return tensors
            return drop_cancelled(run, tensors, generators) if shrink else tensors

        if self._cfg_split is not None:
            self._cfg_split.pipeline = pipeline  # splits its CFG batch over the rank pair
        if self._cache_counter is not None:
            # The cache's residuals belong to the last call's images: never carried over.
            getattr(self.pipeline, self.family.denoiser)._reset_stateful_cache()
        with vae_dtype_kept(self.pipeline.vae):
            output = pipeline(
                **embeds,
                **extra,
                num_inference_steps=first.num_inference_steps,
                num_images_per_prompt=1,
                generator=generators,
                output_type="latent",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=tensors,
                **self.family.call_kwargs(first),
            )
        if graphed:  # captured (or compiled) at the first step, cancelled or not
            self.warm.add("unet", size, rows)
        if self._cache_counter is not None:
            run.step_cache = self._cache_counter.take(run.steps_done)
        latents: torch.Tensor = output.images
        return latents
