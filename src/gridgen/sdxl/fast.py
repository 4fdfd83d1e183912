"""What ``SDXLWorker.setup(optimize=...)`` does to a loaded pipeline, and why.

Every choice here was measured on one H100 (full-size SDXL, 1024x1024, 20 steps, CFG;
``bench/explore/NOTES.md`` has the tables):

* **CUDA graph of the UNet forward** (:class:`GraphedUNet`): one graph per input shape,
  captured on first use. At one image per call the eager UNet is bound by the host's
  kernel launches (106 ms a step); replaying a graph takes 43 ms. Outputs are bitwise
  those of eager.
* **Fused QKV projections**: no speed change on its own, bitwise-identical latents, and
  fewer, larger GEMMs for the compiler.
* **VAE in 16 bits**: bf16 when the VAE's config says ``force_upcast`` (SDXL's VAE
  overflows in fp16), else fp16. 0.091 s instead of 0.134 s per 1024x1024 decode;
  images within 0.04 (max) / 0.003 (mean) of fp32 on a 0..1 scale.
* **Regional compile** (``optimize="compile"``): ``torch.compile`` of the repeated
  blocks (``BasicTransformerBlock``, ``ResnetBlock2D``, and the VAE's ``ResnetBlock2D``)
  with ``fullgraph=True, dynamic=False``. Another 15 % on the UNet and 2x on the VAE,
  at the price of about a minute of compile per (batch, size) shape on first use: warm
  the shapes you serve in ``setup(warmup=...)``. Compiling the whole UNet with
  ``mode="reduce-overhead"`` did not finish in 9 minutes.

Not used, because they measured slower or equal: channels_last (-8 %), forcing an SDPA
backend (the default is already cuDNN flash attention), ``cudnn.benchmark``, a bf16 UNet.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

__all__ = ["GraphedUNet", "OptimizeMode", "optimize_pipeline"]

logger = logging.getLogger("gridgen.sdxl")

OptimizeMode = Literal["auto", "graphs", "compile", "none"]
"""``auto``: ``graphs`` on CUDA, ``none`` on CPU. ``graphs``: fused QKV, 16-bit VAE, CUDA
graphs. ``compile``: ``graphs`` plus regional ``torch.compile``. ``none``: the pipeline as loaded."""

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

    def __init__(self, unet: Any, warmup: int = 2) -> None:
        import torch

        self.unet = unet
        self.eager = unet.forward
        self.warmup = warmup
        self.cuda = next(unet.parameters()).device.type == "cuda"
        self.entries: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.capture_seconds: dict[str, float] = {}
        self.fallbacks = 0
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None

    def install(self) -> GraphedUNet:
        self.unet.forward = self
        return self

    def uninstall(self) -> None:
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
        key = tuple((tuple(x.shape), x.dtype) for x in (sample, timestep, encoder_hidden_states, te, ti))
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
        import time

        import torch

        started = time.perf_counter()
        static = {"sample": sample.clone(), "t": timestep.clone(), "ehs": ehs.clone(), "te": te.clone(), "ti": ti.clone()}
        graph, out = None, None
        if self.cuda:
            # Warm up on a side stream (cuBLAS/cuDNN workspaces, compiled kernels), then capture.
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._run(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(static)
            torch.cuda.synchronize()
        entry = {"static": static, "graph": graph, "out": out}
        self.entries[key] = entry
        self.capture_seconds[str(key[0][0])] = time.perf_counter() - started
        logger.info("UNet graph for sample shape %s ready in %.2fs", key[0][0], self.capture_seconds[str(key[0][0])])
        return entry


def optimize_pipeline(pipeline: Any, mode: OptimizeMode, device: Any) -> GraphedUNet | None:
    """Apply ``mode`` to ``pipeline`` in place (see the module docstring); return the graph wrapper."""
    import torch

    if mode not in ("auto", "graphs", "compile", "none"):
        raise ValueError(f"optimize must be 'auto', 'graphs', 'compile' or 'none', got {mode!r}")
    is_cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        mode = "graphs" if is_cuda else "none"
    if mode == "none":
        return None
    unet, vae = pipeline.unet, pipeline.vae
    unet.fuse_qkv_projections()
    if unet.dtype in (torch.float16, torch.bfloat16):
        vae.to(dtype=torch.bfloat16 if getattr(vae.config, "force_upcast", False) else torch.float16)
    if mode == "compile":
        import torch._dynamo

        # One compiled graph per block instance and shape: far more than the default limit.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        unet._repeated_blocks = ["BasicTransformerBlock", "ResnetBlock2D"]
        unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
        vae._repeated_blocks = ["ResnetBlock2D"]
        vae.compile_repeated_blocks(fullgraph=True, dynamic=False)
    return GraphedUNet(unet).install()
