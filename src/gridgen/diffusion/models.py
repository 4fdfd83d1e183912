"""Getting a FLUX.1 or SD3.5 pipeline, and telling which family a model belongs to.

Model names, like SDXL's (:mod:`gridgen.sdxl.models`):

``"tiny-flux"`` / ``"tiny-sd3"``
    Tiny random-weight pipelines of the real classes (``FluxTransformer2DModel`` or
    ``SD3Transformer2DModel``, a 16-channel ``AutoencoderKL``, CLIP and T5 encoders, a
    ``FlowMatchEulerDiscreteScheduler``), drawn from a fixed seed, written once with
    ``save_pretrained`` under :func:`~gridgen.sdxl.models.cache_dir` and loaded back with
    ``from_pretrained``. The tokenizers are written locally: the byte-level CLIP one of
    ``tiny`` and a T5 (Unigram) tokenizer of single characters. No download.

``"flux-random"`` / ``"sd3-random"``
    FLUX.1-dev and SD3.5 Large at full size (the shipped ``configs/*.json``, from the
    published model configs) with random weights, built on the device. For GPU benchmarks.

anything else
    A hub id or local folder; :func:`family_of` reads its ``model_index.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._hub import dtype_kwargs, from_pretrained, looks_like_path
from ..sdxl import models as sdxl_models
from ..sdxl._tokenizer import local_tokenizer, token_ids
from .families import FAMILIES, FLUX_DEV, FLUX_SCHNELL, SD3, SDXL, Family

if TYPE_CHECKING:
    import torch

__all__ = [
    "BUILTIN_MODELS",
    "build_random",
    "build_tiny_flux",
    "build_tiny_sd3",
    "ensure_tiny",
    "family_config",
    "family_of",
    "load_family_pipeline",
    "t5_tokenizer",
]

BUILTIN_MODELS: dict[str, Family] = {
    sdxl_models.TINY_MODEL: SDXL,
    sdxl_models.RANDOM_MODEL: SDXL,
    "tiny-flux": FLUX_DEV,
    "flux-random": FLUX_DEV,
    "tiny-sd3": SD3,
    "sd3-random": SD3,
}
"""Built-in model names and their family."""

_TINY_DIRS = {"tiny-flux": "tiny-flux-v1", "tiny-sd3": "tiny-sd3-v1"}
_CONFIGS = {"flux-random": "flux.1-dev.json", "sd3-random": "sd3.5-large.json"}
_SEED = 1234


def _d() -> Any:
    import diffusers

    return diffusers


def _t() -> Any:
    import transformers

    return transformers


def family_config(name: str) -> dict[str, Any]:
    """The shipped component configs of ``"flux-random"`` or ``"sd3-random"``."""
    text = resources.files("gridgen.diffusion").joinpath(f"configs/{_CONFIGS[name]}").read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def _kwargs(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if not k.startswith("_") and k not in ("note", "model_type")}


def t5_tokenizer() -> Any:
    """A T5 (Unigram) tokenizer of single characters: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2,
    the word marker, then printable ASCII alone and after the word marker (192 tokens)."""
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return _t().T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5(tokenizer: Any, d_model: int, **extra: Any) -> Any:
    t = _t()
    config = t.T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **extra,
    )
    return t.T5EncoderModel(config)


def _clip_config(tokenizer: Any, hidden: int, act: str) -> Any:
    return _t().CLIPTextConfig(
        hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, vocab_size=len(tokenizer), projection_dim=hidden,
        layer_norm_eps=1e-5, hidden_act=act, **token_ids(tokenizer),
    )


def _tiny_vae(scaling: float, shift: float) -> Any:
    return _d().AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=16, norm_num_groups=4, sample_size=64,
        scaling_factor=scaling, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False,
    )


def build_tiny_flux(guidance_embeds: bool = True) -> Any:
    """The tiny random-weight FLUX.1 pipeline (CPU, float32), deterministically.

    ``guidance_embeds=False`` makes a FLUX.1-schnell-shaped one (no guidance input).
    """
    d = _d()
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = local_tokenizer(Path(tmp))
    t5_tok = t5_tokenizer()
    scheduler = _kwargs(family_config("flux-random")["scheduler"])
    with sdxl_models._seeded(_SEED):
        transformer = d.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
        )
        vae = _tiny_vae(0.3611, 0.1159)
        text_encoder = _t().CLIPTextModel(_clip_config(clip_tokenizer, 32, "quick_gelu"))
        text_encoder_2 = _t5(t5_tok, 32)
    return d.FluxPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(**scheduler), vae=vae,
        text_encoder=text_encoder, tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok, transformer=transformer,
    )


def build_tiny_sd3() -> Any:
    """The tiny random-weight SD3 pipeline (CPU, float32), deterministically."""
    d, t = _d(), _t()
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = local_tokenizer(Path(tmp))
    t5_tok = t5_tokenizer()
    scheduler = _kwargs(family_config("sd3-random")["scheduler"])
    with sdxl_models._seeded(_SEED):
        transformer = d.SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
            pooled_projection_dim=64, out_channels=16, pos_embed_max_size=128,
        )
        vae = _tiny_vae(1.5305, 0.0609)
        text_encoder = t.CLIPTextModelWithProjection(_clip_config(clip_tokenizer, 32, "quick_gelu"))
        text_encoder_2 = t.CLIPTextModelWithProjection(_clip_config(clip_tokenizer, 32, "gelu"))
        text_encoder_3 = _t5(t5_tok, 64)  # at least both CLIP widths together (SD3 pads them to it)
    return d.StableDiffusion3Pipeline(
        transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(**scheduler), vae=vae,
        text_encoder=text_encoder, tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer, text_encoder_3=text_encoder_3, tokenizer_3=t5_tok,
    )


_BUILDERS: dict[str, Callable[[], Any]] = {"tiny-flux": build_tiny_flux, "tiny-sd3": build_tiny_sd3}


def ensure_tiny(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of built-in tiny model ``name`` (``"tiny"``, ``"tiny-flux"``, ``"tiny-sd3"``),
    built and saved first if missing; safe when processes race (one rename wins)."""
    if name == sdxl_models.TINY_MODEL:
        return sdxl_models.ensure_tiny_sdxl(root)
    base = Path(root) if root is not None else sdxl_models.cache_dir()
    target = base / _TINY_DIRS[name]
    if (target / "model_index.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_TINY_DIRS[name]}-", dir=base))
    try:
        _BUILDERS[name]().save_pretrained(tmp, safe_serialization=True)
        for sub in ("tokenizer", "tokenizer_2"):
            if (tmp / sub / "vocab.json").is_file():
                sdxl_models.write_tokenizer_files(tmp / sub)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_random(
    name: str, device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None,
    config: dict[str, Any] | None = None, seed: int = 0,
) -> Any:
    """``"flux-random"`` or ``"sd3-random"``: the full-size architecture with seeded random
    weights, built on ``device`` (``config`` replaces the shipped one; tests shrink it)."""
    import torch

    d, t = _d(), _t()
    cfg = config if config is not None else family_config(name)
    target = torch.device(device)
    torch_dtype = sdxl_models.resolve_dtype(dtype, target)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = local_tokenizer(Path(tmp))
    t5_tok, ids = t5_tokenizer(), token_ids(clip_tokenizer)
    modules: _CastOnSet = _CastOnSet(torch_dtype)
    with torch.device(target):
        modules["vae"] = d.AutoencoderKL(**_kwargs(cfg["vae"]))
        modules["text_encoder_3" if name == "sd3-random" else "text_encoder_2"] = t.T5EncoderModel(
            t.T5Config(**_kwargs(cfg["t5"]))
        )
        clip = t.CLIPTextModel if name == "flux-random" else t.CLIPTextModelWithProjection
        modules["text_encoder"] = clip(t.CLIPTextConfig(**_kwargs(cfg["text_encoder"]), **ids))
        if name == "sd3-random":
            modules["text_encoder_2"] = t.CLIPTextModelWithProjection(
                t.CLIPTextConfig(**_kwargs(cfg["text_encoder_2"]), **ids)
            )
            modules["transformer"] = d.SD3Transformer2DModel(**_kwargs(cfg["transformer"]))
        else:
            modules["transformer"] = d.FluxTransformer2DModel(**_kwargs(cfg["transformer"]))
    generator = torch.Generator(target).manual_seed(seed)
    for module in modules.values():
        sdxl_models._condition_init(module, generator)
        module.eval()
    scheduler = d.FlowMatchEulerDiscreteScheduler(**_kwargs(cfg["scheduler"]))
    if name == "sd3-random":
        return d.StableDiffusion3Pipeline(
            scheduler=scheduler, tokenizer=clip_tokenizer, tokenizer_2=clip_tokenizer,
            tokenizer_3=t5_tok, **modules,
        )
    return d.FluxPipeline(scheduler=scheduler, tokenizer=clip_tokenizer, tokenizer_2=t5_tok, **modules)


class _CastOnSet(dict[str, Any]):
    """Casts each module to the target dtype as it is stored: built one at a time in float32,
    the full-size parts never hold float32 copies of all of them at once (70 GB for FLUX.1)."""

    def __init__(self, dtype: Any) -> None:
        super().__init__()
        self.dtype = dtype

    def __setitem__(self, key: str, module: Any) -> None:
        super().__setitem__(key, module.to(self.dtype))


def _model_index(model: str) -> tuple[dict[str, Any], Callable[[str], dict[str, Any] | None]] | None:
    """``model_index.json`` of a folder or hub id, and a reader of its other JSON files;
    None when it cannot be read (not cached and no hub)."""
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        def read_local(name: str) -> dict[str, Any] | None:
            path = folder / name
            return json.loads(path.read_text("utf-8")) if path.is_file() else None

        index = read_local("model_index.json")
        return None if index is None else (index, read_local)
    if looks_like_path(model):
        return None
    from huggingface_hub import hf_hub_download

    from .._hub import hub_reachable

    online = hub_reachable()

    def read_hub(name: str) -> dict[str, Any] | None:
        for local_only in (True, False) if online else (True,):
            try:
                path = hf_hub_download(model, name, local_files_only=local_only)
            except Exception:
                continue
            data: dict[str, Any] = json.loads(Path(path).read_text("utf-8"))
            return data
        return None

    index = read_hub("model_index.json")
    return None if index is None else (index, read_hub)


def family_of(model: str) -> Family:
    """The family of ``model``: a built-in name, or a folder / hub id by its ``model_index.json``.

    A model whose ``model_index.json`` cannot be read (not cached, hub unreachable) counts
    as SDXL, so loading it fails as it always did, with
    :class:`~gridgen.ModelNotFoundError` and how to fix it.

    Raises:
        ValueError: the pipeline class is not one gridgen has a family for.
    """
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]
    found = _model_index(model)
    if found is None:
        return SDXL
    index, read = found
    class_name = str(index.get("_class_name", ""))
    if class_name == "FluxPipeline":
        transformer = read("transformer/config.json") or {}
        return FLUX_DEV if transformer.get("guidance_embeds", True) else FLUX_SCHNELL
    for family in FAMILIES.values():
        if family.pipeline_class == class_name:
            return family
    known = ", ".join(sorted({f.pipeline_class for f in FAMILIES.values()}))
    raise ValueError(f"model {model!r} is a {class_name or 'unknown'} pipeline; gridgen serves {known}")


def load_family_pipeline(
    family: Family, model: str, *, device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None, **from_pretrained_kwargs: Any,
) -> Any:
    """Load ``model`` as a ``family`` pipeline onto ``device`` (see the module docstring).

    Raises:
        ModelNotFoundError: not a folder, not cached, and the hub is unreachable.
    """
    import torch

    if family is SDXL:
        return sdxl_models.load_pipeline(model, device=device, dtype=dtype, **from_pretrained_kwargs)
    target = torch.device(device)
    torch_dtype = sdxl_models.resolve_dtype(dtype, target)
    if model in _CONFIGS:
        return build_random(model, target, torch_dtype)
    pipeline_cls = getattr(_d(), family.pipeline_class)
    kwargs = {**dtype_kwargs(torch_dtype, from_pretrained_kwargs), **from_pretrained_kwargs}
    if model in _TINY_DIRS:
        kwargs.setdefault("local_files_only", True)
        pipeline = pipeline_cls.from_pretrained(str(ensure_tiny(model)), **kwargs)
    else:
        pipeline = from_pretrained(pipeline_cls, "model", model, **kwargs)
    return pipeline.to(target)
