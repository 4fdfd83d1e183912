"""Getting an SDXL pipeline: from the hub or a folder, the built-in ``tiny`` model, or full size with random weights.

Three kinds of ``model`` name, all through :func:`load_pipeline`:

``"tiny"``
    A 5 MB SDXL made of the real classes (``UNet2DConditionModel``,
    ``AutoencoderKL``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``,
    ``CLIPTokenizer``, ``EulerDiscreteScheduler``) with random weights drawn from a
    fixed seed. It is written once with ``save_pretrained`` to
    ``$GRIDGEN_CACHE/tiny-sdxl-v1`` (default ``~/.cache/gridgen/tiny-sdxl-v1``) and
    loaded back with ``from_pretrained``, the same path a real model takes. Needs no
    download; its images are noise. Tests and the quick start use it.

``"sdxl-random"``
    The full-size SDXL base 1.0 architecture (the shipped ``configs/sdxl-base-1.0.json``)
    with random weights, built directly on the target device in the target dtype and
    never saved. Compute per step equals the real model's: for GPU benchmarks.

anything else
    A hub id (``"stabilityai/stable-diffusion-xl-base-1.0"``) or a local folder, loaded
    with ``StableDiffusionXLPipeline.from_pretrained``. The local cache is tried first
    with ``local_files_only=True``; the hub is only contacted when it answers a quick
    connection probe, so an offline machine fails at once with :class:`ModelNotFoundError`
    instead of hanging on retries.

The tokenizers of ``tiny`` and ``sdxl-random`` are byte-level ``CLIPTokenizer`` files
(``vocab.json`` with the 256 byte symbols, their ``</w>`` forms and the two special
tokens; an empty ``merges.txt``) written locally: the real vocabulary is not needed to
exercise or time the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._hub import DEFAULT_MODEL, DEFAULT_PREVIEW_MODEL
from .._hub import dtype_kwargs as _dtype_kwargs
from .._hub import from_pretrained as _from_pretrained
from ..errors import ModelNotFoundError
from ._tokenizer import local_tokenizer, token_ids, write_tokenizer_files

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PREVIEW_MODEL",
    "RANDOM_MODEL",
    "TINY_MODEL",
    "ModelNotFoundError",
    "build_random_sdxl",
    "build_tiny_sdxl",
    "build_tiny_taesd",
    "cache_dir",
    "ensure_tiny_sdxl",
    "load_pipeline",
    "load_preview_decoder",
    "resolve_dtype",
    "sdxl_base_config",
    "write_tokenizer_files",
]

TINY_MODEL = "tiny"
RANDOM_MODEL = "sdxl-random"

_TINY_DIRNAME = "tiny-sdxl-v1"
_TINY_SEED = 1234


# -- small helpers -----------------------------------------------------------------


def cache_dir() -> Path:
    """Where gridgen keeps what it builds: ``$GRIDGEN_CACHE``, else ``$XDG_CACHE_HOME/gridgen``,
    else ``~/.cache/gridgen``."""
    if env := os.environ.get("GRIDGEN_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gridgen"


_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str) -> torch.dtype:
    """``None`` means float16 on CUDA and float32 elsewhere; strings like ``"fp16"`` are accepted."""
    import torch

    if dtype is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(
            f"dtype must be float16, bfloat16 or float32 (or None for auto), got {dtype!r}"
        )
    resolved: torch.dtype = getattr(torch, name)
    return resolved


def sdxl_base_config() -> dict[str, Any]:
    """The shipped component configs of SDXL base 1.0 (``configs/sdxl-base-1.0.json``)."""
    text = resources.files("gridgen.sdxl").joinpath("configs/sdxl-base-1.0.json").read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def _kwargs(section: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords of one component config: drop ``_class_name``, notes and the like."""
    return {k: v for k, v in section.items() if not k.startswith("_") and k != "note"}


def _diffusers() -> Any:
    """diffusers, typed loosely: its classes are partly annotated and register modules at run time."""
    _transformers()  # first: importing diffusers' pipelines logs transformers warnings
    import diffusers

    _quiet(diffusers.utils.logging)
    return diffusers


def _transformers() -> Any:
    import transformers

    _quiet(transformers.utils.logging)
    return transformers


def verbose() -> bool:
    """Whether ``GRIDGEN_VERBOSE`` asks for the model libraries' own output (see :func:`_quiet`)."""
    return os.environ.get("GRIDGEN_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}


def _quiet(library_logging: Any) -> None:
    """transformers and diffusers print warnings (``accelerate`` missing, ``torchvision``
    missing...) and loading bars in every worker: errors only and no bars, unless
    ``GRIDGEN_VERBOSE=1`` is set (the workers inherit it; ``gridgen --verbose`` sets it)."""
    if verbose():
        return
    library_logging.set_verbosity_error()
    library_logging.disable_progress_bar()
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for a block without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# -- the tiny model ---------------------------------------------------------------


def _assemble(
    unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, tokenizer: Any, scheduler_config: dict[str, Any]
) -> StableDiffusionXLPipeline:
    """The SDXL pipeline around built components; both encoders share the one local tokenizer."""
    pipeline: StableDiffusionXLPipeline = _diffusers().StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_diffusers().EulerDiscreteScheduler(**scheduler_config),
        add_watermarker=False,
    )
    return pipeline


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """Build the tiny random-weight SDXL in memory (CPU, float32), deterministically.

    The UNet (2 blocks of 32/64 channels, 1 transformer layer each), the VAE (4 blocks of
    8 channels, so latents are 1/8 of the image like SDXL's) and the two 2-layer text
    encoders (hidden size 32) are the real diffusers/transformers classes; the weights are
    drawn from a fixed seed, so every build is identical.
    """
    d, t = _diffusers(), _transformers()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = local_tokenizer(Path(tmp))
    ids = token_ids(tokenizer)
    text_config: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "vocab_size": len(tokenizer),
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
        **ids,
    }
    scheduler_config = _kwargs(sdxl_base_config()["scheduler"])
    with _seeded(_TINY_SEED):
        unet = d.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 1),
            use_linear_projection=True,
            cross_attention_dim=64,  # the two encoders' hidden states, 32 + 32, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # pooled 32 + 6 time ids x 8
            norm_num_groups=8,
        )
        vae = d.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.13025,
            force_upcast=True,
        )
        text_encoder = t.CLIPTextModel(t.CLIPTextConfig(hidden_act="quick_gelu", **text_config))
        text_encoder_2 = t.CLIPTextModelWithProjection(
            t.CLIPTextConfig(hidden_act="gelu", **text_config)
        )
    return _assemble(unet, vae, text_encoder, text_encoder_2, tokenizer, scheduler_config)


def build_tiny_taesd() -> AutoencoderTiny:
    """A tiny random-weight ``AutoencoderTiny`` (TAESD-shaped preview decoder), built deterministically."""
    with _seeded(_TINY_SEED + 1):
        decoder: AutoencoderTiny = _diffusers().AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    return decoder


def ensure_tiny_sdxl(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of the tiny model, building and saving it first if it is missing.

    The folder (``<root>/tiny-sdxl-v1``, root defaulting to :func:`cache_dir`) holds a
    ``save_pretrained`` pipeline plus ``taesd/`` (a tiny ``AutoencoderTiny``) and the
    tokenizer's ``vocab.json``/``merges.txt``. It is built in a temporary folder beside
    the target and renamed into place, so processes racing to build it are safe: one
    rename wins and the others discard their copy.
    """
    base = Path(root) if root is not None else cache_dir()
    target = base / _TINY_DIRNAME
    if (target / "model_index.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_TINY_DIRNAME}-", dir=base))
    try:
        pipeline: Any = build_tiny_sdxl()
        pipeline.save_pretrained(tmp, safe_serialization=True)
        for sub in ("tokenizer", "tokenizer_2"):
            write_tokenizer_files(tmp / sub)  # also readable by transformers 4.x slow tokenizers
        decoder: Any = build_tiny_taesd()
        decoder.save_pretrained(tmp / "taesd", safe_serialization=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise  # not a lost race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# -- the full-size random model ---------------------------------------------------


def torch_no_grad(function: Any) -> Any:
    """``torch.no_grad()`` as a decorator, importing torch only when the function runs."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return wrapper


def build_random_sdxl(
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> StableDiffusionXLPipeline:
    """Build SDXL base 1.0's architecture with random weights directly on ``device``.

    The weights depend only on ``seed`` (see ``_condition_init``), so every process that
    builds the model holds the same one.

    Modules are constructed under ``torch.device(device)`` (so the weights are initialised
    on the GPU, where it is fast, and never cross PCIe) and then cast to ``dtype``.
    Nothing is saved. ``config`` replaces the shipped :func:`sdxl_base_config` (tests pass a
    shrunken copy). The tokenizer is the locally written byte-level one.
    """
    import torch

    d, t = _diffusers(), _transformers()
    cfg = config if config is not None else sdxl_base_config()
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = local_tokenizer(Path(tmp))
    ids = token_ids(tokenizer)
    with torch.device(target):
        unet = d.UNet2DConditionModel(**_kwargs(cfg["unet"])).to(torch_dtype)
        vae = d.AutoencoderKL(**_kwargs(cfg["vae"])).to(torch_dtype)
        te_kwargs = {k: v for k, v in _kwargs(cfg["text_encoder"]).items() if k != "model_type"}
        te2_kwargs = {k: v for k, v in _kwargs(cfg["text_encoder_2"]).items() if k != "model_type"}
        text_encoder = t.CLIPTextModel(t.CLIPTextConfig(**te_kwargs, **ids)).to(torch_dtype)
        text_encoder_2 = t.CLIPTextModelWithProjection(t.CLIPTextConfig(**te2_kwargs, **ids)).to(
            torch_dtype
        )
    pipeline = _assemble(unet, vae, text_encoder, text_encoder_2, tokenizer, _kwargs(cfg["scheduler"]))
    generator = torch.Generator(target).manual_seed(seed)
    for module in (unet, vae, text_encoder, text_encoder_2):
        _condition_init(module, generator)
        module.eval()
    return pipeline


@torch_no_grad
def _condition_init(module: Any, generator: Any) -> None:
    """Seeded, well-conditioned random weights: normal(0, 0.02), zero biases, unit norm scales.

    PyTorch's default initialisation makes 20 denoising steps of this architecture chaotic
    (tiny float reorderings grow into different images), which would make any comparison
    of an optimised path with eager meaningless; a seed makes every process build the same
    weights, so two workers can be compared at all.
    """
    for name, parameter in module.named_parameters():
        if parameter.dim() >= 2:
            parameter.normal_(0.0, 0.02, generator=generator)
        elif name.endswith("weight"):
            parameter.fill_(1.0)  # LayerNorm / GroupNorm scales
        else:
            parameter.zero_()


# -- loading ------------------------------------------------------------------------


def load_pipeline(
    model: str = DEFAULT_MODEL,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    **from_pretrained_kwargs: Any,
) -> StableDiffusionXLPipeline:
    """Load an SDXL pipeline onto ``device``.

    Args:
        model: ``"tiny"``, ``"sdxl-random"``, a hub id or a local folder (see the module docs).
        device: where the pipeline runs.
        dtype: weights' dtype; ``None`` is float16 on CUDA, float32 elsewhere.
        **from_pretrained_kwargs: passed to ``StableDiffusionXLPipeline.from_pretrained``
            (ignored by ``"sdxl-random"``).

    Raises:
        ModelNotFoundError: the model is not a folder, not cached, and the hub is unreachable.
    """
    import torch

    pipeline_cls = _diffusers().StableDiffusionXLPipeline
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if model == RANDOM_MODEL:
        return build_random_sdxl(target, torch_dtype)
    kwargs = {**_dtype_kwargs(torch_dtype, from_pretrained_kwargs), **from_pretrained_kwargs}
    if model == TINY_MODEL:
        kwargs.setdefault("local_files_only", True)
        pipeline = pipeline_cls.from_pretrained(str(ensure_tiny_sdxl()), **kwargs)
    else:
        pipeline = _from_pretrained(pipeline_cls, "model", model, **kwargs)
    loaded: StableDiffusionXLPipeline = pipeline.to(target)
    return loaded


def load_preview_decoder(
    preview_model: str | None,
    *,
    model: str = DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> AutoencoderTiny:
    """Load the ``AutoencoderTiny`` used for previews.

    ``preview_model`` is a hub id or folder; ``None`` means the tiny model's own ``taesd/``
    when ``model == "tiny"``, else ``madebyollin/taesdxl``; ``"tiny"`` always means the
    built-in tiny decoder.
    """
    import torch

    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if preview_model == TINY_MODEL or (preview_model is None and model == TINY_MODEL):
        source = str(ensure_tiny_sdxl() / "taesd")
    else:
        source = preview_model or DEFAULT_PREVIEW_MODEL
    decoder = _from_pretrained(
        _diffusers().AutoencoderTiny, "preview model", source, **_dtype_kwargs(torch_dtype, {})
    )
    loaded: AutoencoderTiny = decoder.to(target).eval()
    return loaded
