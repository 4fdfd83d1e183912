"""Building models locally: the built-in tiny ones and full-size architectures with random weights.

``"tiny"`` / ``"tiny-flux"`` / ``"tiny-sd3"``
    A few MB of SDXL, FLUX.1-dev or SD3.5 made of the real classes (UNet or transformer,
    ``AutoencoderKL``, CLIP and T5 encoders, the family's scheduler) with random weights
    drawn from a fixed seed. Each is written once with ``save_pretrained`` under
    ``$GRIDGEN_CACHE`` (default ``~/.cache/gridgen``) and loaded back with
    ``from_pretrained``, the same path a real model takes. Needs no download; its images are
    noise. Tests and the quick start use them.

``"sdxl-random"`` / ``"flux-random"`` / ``"flux-schnell-random"`` / ``"sd3-random"``
    The full-size architectures (the shipped ``configs/*.json``) with seeded random weights,
    built directly on the target device in the target dtype and never saved. Compute per
    step equals the real model's: for GPU benchmarks.

The tokenizers are written locally: a byte-level ``CLIPTokenizer`` (``vocab.json`` with the
256 byte symbols, their ``</w>`` forms and the two special tokens; an empty
``merges.txt``) and a T5 (Unigram) tokenizer of single characters. The real vocabularies
are not needed to exercise or time the models.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._env import cache_dir, resolve_dtype
from ._env import diffusers as _d
from ._env import transformers as _t
from ._tokenizer import local_tokenizer, token_ids, write_tokenizer_files

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

__all__ = [
    "RANDOM_MODEL",
    "TINY_MODEL",
    "build_random",
    "build_random_sdxl",
    "build_tiny_flux",
    "build_tiny_sd3",
    "build_tiny_sdxl",
    "build_tiny_taesd",
    "ensure_tiny",
    "ensure_tiny_sdxl",
    "ensure_tiny_taesd",
    "family_config",
    "sdxl_base_config",
    "t5_tokenizer",
]

TINY_MODEL = "tiny"
RANDOM_MODEL = "sdxl-random"
_TINY_DIRS = {"tiny-flux": "tiny-flux-v1", "tiny-sd3": "tiny-sd3-v1"}
_CONFIGS = {"flux-random": "flux.1-dev.json", "flux-schnell-random": "flux.1-dev.json", "sd3-random": "sd3.5-large.json"}
# FLUX.1-schnell is FLUX.1-dev's architecture without the guidance input, with a fixed
# shift of 1 (its scheduler_config.json and transformer/config.json on the hub).
_SCHNELL = {"transformer": {"guidance_embeds": False}, "scheduler": {"shift": 1.0, "use_dynamic_shifting": False}}

_TINY_DIRNAME = "tiny-sdxl-v1"
_TINY_SEED = 1234


# -- small helpers -----------------------------------------------------------------


def sdxl_base_config() -> dict[str, Any]:
    """The shipped component configs of SDXL base 1.0 (``configs/sdxl-base-1.0.json``)."""
    text = resources.files("gridgen.diffusion").joinpath("configs/sdxl-base-1.0.json").read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def _kwargs(section: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords of one component config: drop ``_class_name``, notes and the like."""
    return {k: v for k, v in section.items() if not k.startswith("_") and k not in ("note", "model_type")}


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
    pipeline: StableDiffusionXLPipeline = _d().StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_d().EulerDiscreteScheduler(**scheduler_config),
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
    d, t = _d(), _t()
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


def _build_once(
    root: str | os.PathLike[str] | None, name: str, marker: str, write: Callable[[Path], None]
) -> Path:
    """``<root>/<name>`` (root defaulting to :func:`cache_dir`), made by ``write(folder)`` if
    ``marker`` is not in it yet. It is written to a temporary folder beside the target and
    renamed into place, so processes racing to build it are safe: one rename wins and the
    others discard their copy."""
    base = Path(root) if root is not None else cache_dir()
    target = base / name
    if (target / marker).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise  # not a lost race: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_taesd(latent_channels: int = 4) -> AutoencoderTiny:
    """A tiny random-weight ``AutoencoderTiny`` (TAESD-shaped preview decoder), built
    deterministically: 4 latent channels (SDXL's) or 16 (FLUX.1's and SD3.5's)."""
    with _seeded(_TINY_SEED + 1):
        decoder: AutoencoderTiny = _d().AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=latent_channels,
        )
    return decoder


def ensure_tiny_taesd(latent_channels: int, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the tiny ``latent_channels`` TAESD (``<root>/tiny-taesd<C>-v1``), saved
    first if missing; the tiny FLUX.1 and SD3.5 models' preview decoder."""

    def write(folder: Path) -> None:
        decoder: Any = build_tiny_taesd(latent_channels)
        decoder.save_pretrained(folder, safe_serialization=True)

    return _build_once(root, f"tiny-taesd{latent_channels}-v1", "config.json", write)


def ensure_tiny_sdxl(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder of the tiny model, building and saving it first if it is missing.

    The folder (``<root>/tiny-sdxl-v1``, root defaulting to :func:`cache_dir`) holds a
    ``save_pretrained`` pipeline plus ``taesd/`` (a tiny ``AutoencoderTiny``) and the
    tokenizer's ``vocab.json``/``merges.txt``. It is built in a temporary folder beside
    the target and renamed into place, so processes racing to build it are safe: one
    rename wins and the others discard their copy.
    """

    def write(folder: Path) -> None:
        pipeline: Any = build_tiny_sdxl()
        pipeline.save_pretrained(folder, safe_serialization=True)
        for sub in ("tokenizer", "tokenizer_2"):
            write_tokenizer_files(folder / sub)  # also readable by transformers 4.x slow tokenizers
        decoder: Any = build_tiny_taesd()
        decoder.save_pretrained(folder / "taesd", safe_serialization=True)

    return _build_once(root, _TINY_DIRNAME, "model_index.json", write)


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

    d, t = _d(), _t()
    cfg = config if config is not None else sdxl_base_config()
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = local_tokenizer(Path(tmp))
    ids = token_ids(tokenizer)
    with torch.device(target):
        unet = d.UNet2DConditionModel(**_kwargs(cfg["unet"])).to(torch_dtype)
        vae = d.AutoencoderKL(**_kwargs(cfg["vae"])).to(torch_dtype)
        te_kwargs = _kwargs(cfg["text_encoder"])
        te2_kwargs = _kwargs(cfg["text_encoder_2"])
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


# -- FLUX.1 and SD3.5 --------------------------------------------------------------


def family_config(name: str) -> dict[str, Any]:
    """The shipped component configs of ``"flux-random"``, ``"flux-schnell-random"`` or ``"sd3-random"``."""
    text = resources.files("gridgen.diffusion").joinpath(f"configs/{_CONFIGS[name]}").read_text("utf-8")
    config: dict[str, Any] = json.loads(text)
    if name == "flux-schnell-random":
        for component, changes in _SCHNELL.items():
            config[component].update(changes)
    return config


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
    with _seeded(_TINY_SEED):
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
    with _seeded(_TINY_SEED):
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
    if name == TINY_MODEL:
        return ensure_tiny_sdxl(root)

    def write(folder: Path) -> None:
        _BUILDERS[name]().save_pretrained(folder, safe_serialization=True)
        for sub in ("tokenizer", "tokenizer_2"):
            if (folder / sub / "vocab.json").is_file():
                write_tokenizer_files(folder / sub)

    return _build_once(root, _TINY_DIRS[name], "model_index.json", write)


def build_random(
    name: str, device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None,
    config: dict[str, Any] | None = None, seed: int = 0,
) -> Any:
    """``"flux-random"``, ``"flux-schnell-random"`` or ``"sd3-random"``: the full-size
    architecture with seeded random weights, built on ``device`` (``config`` replaces the
    shipped one; tests shrink it). On ``"meta"`` it has the shapes and no weights: what
    each part weighs, in no time and memory."""
    import torch

    d, t = _d(), _t()
    cfg = config if config is not None else family_config(name)
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = local_tokenizer(Path(tmp))
    t5_tok, ids = t5_tokenizer(), token_ids(clip_tokenizer)
    modules: _CastOnSet = _CastOnSet(torch_dtype)
    with torch.device(target):
        modules["vae"] = d.AutoencoderKL(**_kwargs(cfg["vae"]))
        modules["text_encoder_3" if name == "sd3-random" else "text_encoder_2"] = t.T5EncoderModel(
            t.T5Config(**_kwargs(cfg["t5"]))
        )
        clip = t.CLIPTextModelWithProjection if name == "sd3-random" else t.CLIPTextModel
        modules["text_encoder"] = clip(t.CLIPTextConfig(**_kwargs(cfg["text_encoder"]), **ids))
        if name == "sd3-random":
            modules["text_encoder_2"] = t.CLIPTextModelWithProjection(
                t.CLIPTextConfig(**_kwargs(cfg["text_encoder_2"]), **ids)
            )
            modules["transformer"] = d.SD3Transformer2DModel(**_kwargs(cfg["transformer"]))
        else:
            modules["transformer"] = d.FluxTransformer2DModel(**_kwargs(cfg["transformer"]))
    generator = None if target.type == "meta" else torch.Generator(target).manual_seed(seed)
    for module in modules.values():
        if generator is not None:
            _condition_init(module, generator)
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
