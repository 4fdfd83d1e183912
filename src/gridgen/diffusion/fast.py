"""What ``DiffusionWorker.setup(optimize=...)`` does to a loaded pipeline, and why.

SDXL (a UNet) takes :func:`optimize_pipeline`, the transformer families (FLUX.1, SD3.5)
:func:`optimize_transformer`.

Every choice here was measured (full-size SDXL, 1024x1024, 20 steps, CFG): first on one
H100 (``bench/explore/NOTES.md``), then on one H200 (``bench/explore/NOTES-h200.md``):

* **CUDA graph of the UNet forward** (:class:`GraphedUNet`): one graph per input shape,
  captured on first use. At one image per call the eager UNet is bound by the host's
  kernel launches (106 ms a step); replaying a graph takes 43 ms. Outputs are bitwise
  those of eager.
* **CUDA graphs of the two text encoders** (:class:`GraphedTextEncoder`): prompt and
  negative prompt through both CLIPs take 45 ms eager, 12 ms replayed, bitwise equal.
* **Fused QKV projections**: no speed change on its own, bitwise-identical latents, and
  fewer, larger GEMMs for the compiler.
* **VAE in 16 bits**: bf16 when the VAE's config says ``force_upcast`` (SDXL's VAE
  overflows in fp16), else fp16. 0.091 s instead of 0.134 s per 1024x1024 decode;
  images within 0.04 (max) / 0.003 (mean) of fp32 on a 0..1 scale.
* **Regional compile** (``optimize="compile"``): ``torch.compile`` with ``fullgraph=True,
  dynamic=False`` of the UNet's regions named by :data:`CompileRegions` (default
  ``"transformers"``: 229 ms per 8-image forward on an H200 against 241 ms for
  ``"blocks"``; ``"stages"`` measured 234 ms and compiles 4x longer) and of the whole VAE
  decoder (36.8 ms per image at 8 images, 35.5 ms at one, against 41.9 / 43.4 ms when only
  its ``ResnetBlock2D``s are compiled; the same compile time). About 25 s of compile per
  (batch, size) shape on first use: warm the shapes you serve in ``setup(warmup=...)``,
  and keep the compiled artifacts across machines with :func:`save_compile_cache` /
  :func:`load_compile_cache`.

Not used, because they measured slower, equal or too inaccurate for what they give:
channels_last (-8 % on the UNet, no change on the compiled VAE decoder), forcing an SDPA
backend (the default is already cuDNN flash attention), ``cudnn.benchmark``, bf16 by
default (``setup(dtype="bf16")`` is 3 % faster end to end on an H200, at 9 times fp16's
difference from eager: an option, so that a seed keeps its image), whole-stage compile
regions, and ``max-autotune`` (benchmarking Triton GEMM and convolution templates per
shape: over 5 minutes for one 8-image shape without finishing, and cuBLAS / cuDNN won
every large GEMM and convolution it had timed; Triton won only the tiny time-embedding GEMMs).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Literal

from .graphed import GraphedForward, capture_graph
from .lossy import Quantize, apply_quantization, apply_step_cache

__all__ = [
    "CompileRegions",
    "GraphedTextEncoder",
    "GraphedUNet",
    "OptimizeMode",
    "compile_blocks",
    "load_compile_cache",
    "optimize_pipeline",
    "optimize_transformer",
    "resolve_optimize",
    "save_compile_cache",
]

logger = logging.getLogger("gridgen.diffusion")

OptimizeMode = Literal["auto", "graphs", "compile", "none"]
"""``auto``: ``graphs`` on CUDA, ``none`` on CPU. ``graphs``: fused QKV, 16-bit VAE, CUDA
graphs. ``compile``: ``graphs`` plus regional ``torch.compile``. ``none``: the pipeline as loaded."""

CompileRegions = Literal["blocks", "transformers", "stages"]
"""Which UNet sub-modules ``optimize="compile"`` compiles, one graph per instance and shape:
``blocks`` the transformer and ResNet blocks; ``transformers`` whole ``Transformer2DModel``s
(their norm, ``proj_in``/``proj_out`` too), ResNet blocks and resamplers; ``stages`` whole
down/mid/up blocks (the up-blocks' skip concatenations too)."""

_REGIONS: dict[str, list[str]] = {
    "blocks": ["BasicTransformerBlock", "ResnetBlock2D"],
    "transformers": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"],
    "stages": [
        "CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn",
        "CrossAttnUpBlock2D", "UpBlock2D",
    ],
}

_COND_KEYS = {"text_embeds", "time_ids"}


class GraphedUNet:
    """Replaces ``unet.forward`` with CUDA graph replays, one graph per input shape.

    Inputs are copied into static buffers, and the returned tensor is the graph's static
    output: valid until the next replay, which is fine because the pipeline consumes each
    noise prediction before the next UNet call (one batch at a time, one stream). All
    graphs share one memory pool for the same reason. Calls with arguments SDXL's text-to-
    image path never passes (ControlNet residuals, masks) fall back to the eager forward.
    On CPU the same static-buffer path runs without a graph, so it is testable anywhere.
    """

    def __init__(self, unet: Any, warmup: int = 2, variant: Callable[[], Hashable] | None = None) -> None:
        import torch

        self.unet = unet
        self.variant = variant
        """What decides the computation besides the shapes (a LoRA slot on or off): part of
        every graph's key."""
        self.eager = unet.forward
        self.warmup = warmup
        self.cuda = next(unet.parameters()).device.type == "cuda"
        self.entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.capture_seconds: dict[str, float] = {}
        self.fallbacks = 0
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None

    def install(self) -> GraphedUNet:
        """Route ``unet.forward`` through the graphs; returns self."""
        self.unet.forward = self
        return self

    def uninstall(self) -> None:
        """Give ``unet`` its eager forward back and drop the graphs (and their buffers)."""
        self.unet.__dict__.pop("forward", None)
        self.entries.clear()

    def _run(self, s: dict[str, Any]) -> Any:
        return self.eager(
            s["sample"],
            s["t"],
            encoder_hidden_states=s["ehs"],
            added_cond_kwargs={"text_embeds": s["te"], "time_ids": s["ti"]},
            return_dict=False,
        )[0]

    def __call__(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        *args: Any,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        import torch

        if args or any(v is not None for v in kwargs.values()) or not added_cond_kwargs or set(added_cond_kwargs) != _COND_KEYS:
            self.fallbacks += 1
            return self.eager(
                sample, timestep, encoder_hidden_states, *args,
                added_cond_kwargs=added_cond_kwargs, return_dict=return_dict, **kwargs,
            )
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, dtype=torch.float32, device=sample.device)
        te, ti = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        key: tuple[Any, ...] = tuple((tuple(x.shape), x.dtype) for x in (sample, timestep, encoder_hidden_states, te, ti))
        if self.variant is not None:
            key = (*key, self.variant())
        entry = self.entries.get(key) or self._capture(key, sample, timestep, encoder_hidden_states, te, ti)
        static = entry["static"]
        for name, value in (("sample", sample), ("t", timestep), ("ehs", encoder_hidden_states), ("te", te), ("ti", ti)):
            static[name].copy_(value)
        if entry["graph"] is not None:
            entry["graph"].replay()
            out = entry["out"]
        else:
            out = self._run(static)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _capture(self, key: tuple[Any, ...], sample: Any, timestep: Any, ehs: Any, te: Any, ti: Any) -> dict[str, Any]:
        started = time.perf_counter()
        static = {"sample": sample.clone(), "t": timestep.clone(), "ehs": ehs.clone(), "te": te.clone(), "ti": ti.clone()}
        graph, out = None, None
        if self.cuda:
            graph, out = capture_graph(lambda: self._run(static), self.warmup, self.pool)
        entry = {"static": static, "graph": graph, "out": out}
        self.entries[key] = entry
        self.capture_seconds[str(key[0][0])] = time.perf_counter() - started
        logger.info("UNet graph for sample shape %s ready in %.2fs", key[0][0], self.capture_seconds[str(key[0][0])])
        return entry


class GraphedTextEncoder:
    """Replaces a CLIP text encoder's ``forward`` with CUDA graph replays, one per token shape.

    The pipeline calls each encoder once for the prompt and once for the negative prompt
    with ``output_hidden_states=True``; eager, that is about 70 ms of kernel launches per
    request at one image. The graph's outputs are static, and the pipeline keeps the first
    call's pooled embedding while it makes the second, so each replay returns clones. A
    capture that fails (an encoder whose forward synchronises) leaves that encoder eager.
    """

    def __init__(self, encoder: Any, warmup: int = 2) -> None:
        self.encoder = encoder
        self.eager = encoder.forward
        self.warmup = warmup
        self.cuda = next(encoder.parameters()).device.type == "cuda"
        self.entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.failed = False
        self.fallbacks = 0

    def install(self) -> GraphedTextEncoder:
        self.encoder.forward = self
        return self

    def __call__(self, input_ids: Any, *args: Any, output_hidden_states: bool | None = None, **kwargs: Any) -> Any:
        if self.failed or args or output_hidden_states is not True or any(v is not None for v in kwargs.values()):
            self.fallbacks += 1
            return self.eager(input_ids, *args, output_hidden_states=output_hidden_states, **kwargs)
        key = (tuple(input_ids.shape), input_ids.dtype, input_ids.device)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._capture(key, input_ids)
            if entry is None:
                return self.eager(input_ids, output_hidden_states=True)
        entry["ids"].copy_(input_ids)
        if entry["graph"] is None:
            return self.eager(entry["ids"], output_hidden_states=True)
        entry["graph"].replay()
        out = entry["out"]
        return _TextEncoderOutput(out[0].clone(), tuple(h.clone() for h in out.hidden_states))

    def _capture(self, key: tuple[Any, ...], input_ids: Any) -> dict[str, Any] | None:
        ids = input_ids.clone()
        entry: dict[str, Any] = {"ids": ids, "graph": None, "out": None}
        if self.cuda:
            try:
                entry["graph"], entry["out"] = capture_graph(
                    lambda: self.eager(ids, output_hidden_states=True), self.warmup
                )
            except Exception as exc:
                logger.warning("text encoder stays eager: CUDA graph capture failed (%s)", exc)
                self.failed = True
                return None
        self.entries[key] = entry
        return entry


class _TextEncoderOutput(tuple):  # type: ignore[type-arg]
    """What the pipeline reads from a CLIP output: ``out[0]`` and ``out.hidden_states``."""

    hidden_states: tuple[Any, ...]

    def __new__(cls, first: Any, hidden_states: tuple[Any, ...]) -> _TextEncoderOutput:
        self = super().__new__(cls, (first,))
        self.hidden_states = hidden_states
        return self


def resolve_optimize(mode: OptimizeMode, device: Any) -> OptimizeMode:
    """``"auto"`` as what it means on ``device``: ``"graphs"`` on CUDA, else ``"none"``."""
    import torch

    if mode == "auto":
        return "graphs" if torch.device(device).type == "cuda" else "none"
    return mode


def optimize_pipeline(
    pipeline: Any,
    mode: OptimizeMode,
    device: Any,
    regions: CompileRegions = "transformers",
    autotune: bool = False,
    text_encoder_graphs: bool = True,
    lora_variant: Callable[[], Hashable] | None = None,
) -> GraphedUNet | None:
    """Apply ``mode`` to ``pipeline`` in place (see the module docstring); return the graph wrapper.

    ``regions`` and ``autotune`` (inductor's ``max-autotune-no-cudagraphs``) only matter for
    ``mode="compile"``; ``text_encoder_graphs`` CUDA-graphs both text encoders (CUDA only).
    ``lora_variant``: the UNet carries a LoRA slot (:mod:`gridgen.diffusion.lora_slots`) and
    this says whether it is on: q/k/v stay unfused (a fused projection would bypass the
    slot) and every graph is keyed on it.
    """
    import torch

    if mode not in ("auto", "graphs", "compile", "none"):
        raise ValueError(f"optimize must be 'auto', 'graphs', 'compile' or 'none', got {mode!r}")
    if regions not in _REGIONS:
        raise ValueError(f"compile_regions must be one of {sorted(_REGIONS)}, got {regions!r}")
    is_cuda = torch.device(device).type == "cuda"
    mode = resolve_optimize(mode, device)
    if mode == "none":
        return None
    unet, vae = pipeline.unet, pipeline.vae
    if lora_variant is None:
        unet.fuse_qkv_projections()
    if unet.dtype in (torch.float16, torch.bfloat16):
        vae.to(dtype=torch.bfloat16 if getattr(vae.config, "force_upcast", False) else torch.float16)
    if mode == "compile":
        import torch._dynamo

        # One compiled graph per block instance and shape: far more than the default limit.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        options: dict[str, Any] = {"fullgraph": True, "dynamic": False}
        if autotune:
            options["mode"] = "max-autotune-no-cudagraphs"
        unet._repeated_blocks = _REGIONS[regions]
        unet.compile_repeated_blocks(**options)
        vae.decoder.compile(fullgraph=True, dynamic=False)
    if text_encoder_graphs and is_cuda:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipeline, name, None)
            if encoder is not None:
                GraphedTextEncoder(encoder).install()
    return GraphedUNet(unet, variant=lora_variant).install()


def optimize_transformer(
    pipeline: Any,
    mode: OptimizeMode,
    device: Any,
    blocks: tuple[str, ...] = (),
    quantize: Quantize = None,
    step_cache: float | None = None,
    lora_variant: Callable[[], Hashable] | None = None,
    text_encoder_graphs: bool = True,
    transformer_graphs: bool = True,
) -> tuple[bool, list[GraphedForward]]:
    """Apply ``mode`` to a transformer family's pipeline (FLUX.1, SD3.5) in place; return
    whether its shapes are now fixed (compiled: each new batch shape compiles) and the CUDA
    graph wrappers it installed.

    ``graphs`` (and ``auto`` on CUDA): fused QKV projections. ``compile``: also
    ``torch.compile`` of the transformer's repeated blocks (``blocks``, else the model's own
    ``_repeated_blocks``; ``fullgraph=True, dynamic=False``: one graph per block class and
    shape, reused by all 57 of FLUX.1's blocks) and of the VAE decoder. ``quantize`` and
    ``step_cache`` are the opt-in lossy levers of :mod:`gridgen.diffusion.lossy`; FP8 is
    applied before compiling, so the compiled graphs hold the float8 kernels. ``lora_variant``:
    the transformer carries a LoRA slot (q/k/v stay unfused) and this says whether it is on;
    it keys every transformer graph. On CUDA, ``compile`` also captures the
    compiled transformer in CUDA graphs when ``transformer_graphs`` (not with the step
    cache, whose per-step decision is read on the host, nor with FP8), and both modes graph
    the text encoders when ``text_encoder_graphs``.
    """
    import torch

    if mode not in ("auto", "graphs", "compile", "none"):
        raise ValueError(f"optimize must be 'auto', 'graphs', 'compile' or 'none', got {mode!r}")
    mode = resolve_optimize(mode, device)
    transformer = pipeline.transformer
    apply_step_cache(transformer, step_cache)
    if mode == "none":
        return False, []
    if lora_variant is None:
        transformer.fuse_qkv_projections()
    apply_quantization(transformer, quantize)
    graphed: list[GraphedForward] = []
    if text_encoder_graphs and torch.device(device).type == "cuda":
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(pipeline, name, None)
            if encoder is not None:
                graphed.append(GraphedForward(encoder).install())
    if mode != "compile":
        return False, graphed
    # The step cache decides per step, from a tensor, whether the remaining blocks run: a
    # graph break in the first block, so its graphs cannot be whole.
    compile_blocks(transformer, blocks, fullgraph=step_cache is None)
    pipeline.vae.decoder.compile(fullgraph=True, dynamic=False)
    # FP8: captured in the bare pipeline on one H100 it ran no faster than the uncaptured FP8
    # worker (2.93 s each: at about 100 ms of GPU work a call there is little launch overhead
    # to hide), so it stays uncaptured and keeps the graph pool's memory.
    if transformer_graphs and step_cache is None and quantize is None and torch.device(device).type == "cuda":
        graphed.append(GraphedForward(transformer, variant=lora_variant).install())
    return True, graphed


def compile_blocks(
    denoiser: Any, blocks: tuple[str, ...] = (), fullgraph: bool = True, mode: str | None = None
) -> None:
    """``torch.compile`` each of ``denoiser``'s repeated blocks (``blocks``, else its own
    ``_repeated_blocks``), static shapes, in ``torch.compile``'s ``mode``; compiling again
    replaces the last compile."""
    import torch._dynamo

    # One compiled graph per block class and shape; SDXL's regions need far more.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if blocks:
        denoiser._repeated_blocks = list(blocks)
    denoiser.compile_repeated_blocks(fullgraph=fullgraph, dynamic=False, mode=mode)


def load_compile_cache(path: str | os.PathLike[str]) -> bool:
    """Load compiled artifacts saved by :func:`save_compile_cache` into this process's caches.

    Returns False when ``path`` does not exist. The artifacts (inductor's FX graph cache,
    Triton kernels, autotuning results) are only used by a matching torch version and GPU
    kind; torch ignores ones that do not match.
    """
    import torch

    file = Path(path)
    if not file.is_file():
        return False
    started = time.perf_counter()
    torch.compiler.load_cache_artifacts(file.read_bytes())
    logger.info("compile cache %s loaded in %.2fs", file, time.perf_counter() - started)
    return True


def save_compile_cache(path: str | os.PathLike[str]) -> int:
    """Write everything this process compiled so far to ``path`` (atomically); return its size.

    Writes nothing (and returns 0) when nothing was compiled, so a worker run without
    ``optimize="compile"`` leaves no empty file behind that a later compiling run would load.
    """
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not any(saved[1].artifacts.values()):
        return 0
    data, _info = saved
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, file)
    logger.info("compile cache written to %s (%d bytes)", file, len(data))
    return len(data)
