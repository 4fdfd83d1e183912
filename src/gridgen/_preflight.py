"""Checks the ``gridgen`` command makes before any worker starts: each bad option is a
:class:`UsageError` (exit status 2) naming the option, the value and what to do, instead of
a failure after minutes of model loading or generation."""

from __future__ import annotations

import argparse
import difflib
import errno
import ipaddress
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "batch_options",
    "check_device",
    "check_model",
    "check_outputs",
    "check_serve_options",
    "int_list",
    "is_loopback",
    "listen",
    "output_file",
    "port_number",
    "positive_int",
    "size",
    "worker_options",
]


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: whole numbers >= 1 separated by commas, e.g. ``1,8``."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"must be whole numbers >= 1 separated by commas, e.g. 1,8 ({exc})") from None


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 for any free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def size(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` in pixels, e.g. ``512x512`` (the family's rules are checked later)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.strip().isdigit() or not height.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT in pixels, e.g. 512x512, got {text!r}")
    return int(width), int(height)


class UsageError(Exception):
    """Bad arguments or request: reported with exit status 2, before anything starts."""


def check_model(model: str | None) -> None:
    """The model must be a folder, in the Hugging Face cache or on a reachable hub: say so
    before starting workers (loading it in every worker would fail the same way, later)."""
    if model and model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().exists():
        raise UsageError(f"--model: no such folder: {model}")
    from ._hub import DEFAULT_MODEL
    from ._hub import check_model as look_up
    from .diffusion.models import BUILTIN_MODELS
    from .errors import ModelNotFoundError

    try:
        look_up(model or DEFAULT_MODEL, BUILTIN_MODELS)
    except ModelNotFoundError as exc:
        close = difflib.get_close_matches(model or "", BUILTIN_MODELS, n=1, cutoff=0.6)
        if close and "/" not in (model or ""):
            raise UsageError(
                f"--model {model}: not a built-in model, a folder or a model in the Hugging Face "
                f"cache; did you mean {close[0]}? (built-in: {', '.join(BUILTIN_MODELS)})"
            ) from None
        raise UsageError(f"--model: {exc}") from None


def check_device(args: argparse.Namespace) -> None:
    """``--device cuda`` needs CUDA, and each worker its own GPU: usage errors, not crashes."""
    if args.device == "cpu":
        return
    import torch

    count = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    if args.device == "cuda" and count == 0:
        raise UsageError("--device cuda: no CUDA device is visible here; use --device cpu (or leave --device out)")
    if count and args.workers is not None and args.workers > count:
        raise UsageError(
            f"--workers {args.workers}: only {count} CUDA device(s) are visible (one worker per GPU); "
            "use fewer --workers or --device cpu"
        )


def _check_folder(option: str, folder: Path) -> None:
    """Create ``folder`` if missing and prove a file can be written in it, or explain why not."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option}: cannot write to {folder}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot write to {folder}: {exc.strerror or exc}") from None


def output_file(output: str) -> str:
    """``-o``'s file: a name ending in a slash is a folder, the grid goes there as ``grid.png``."""
    if output.endswith(("/", os.sep)):
        return str(Path(output) / "grid.png")
    return output


def check_outputs(args: argparse.Namespace) -> None:
    """The output paths, before the minutes of generation that would be lost on a bad one."""
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"-o/--output: {output} is a folder; name the grid file, e.g. {output / 'grid.png'}")
    _check_folder("-o/--output", output.parent)
    if output.exists() and not os.access(output, os.W_OK):
        raise UsageError(f"-o/--output: cannot write to {output}: permission denied")
    if args.save_dir:
        _check_folder("--save-dir", Path(args.save_dir))


def listen(host: str, port: int) -> socket.socket:
    """A bound listening socket for uvicorn, or a usage error that names the option."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise UsageError(f"--host {host}: cannot resolve it: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; pick another --port (0: any free one)" if exc.errno == errno.EADDRINUSE else ""
        raise UsageError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def worker_options(
    args: argparse.Namespace, family: Any, request_size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The worker's ``setup`` arguments from the speed options, checked against the model's family.

    The warm-up runs at ``--warmup-size``, else at ``request_size`` (``generate``'s own
    request), else at the worker's default (the families' default size, 1024x1024)."""
    options: dict[str, Any] = {}
    if args.optimize is not None:
        options["optimize"] = args.optimize
    if args.compile_cache is not None:
        if args.optimize != "compile":
            raise UsageError("--compile-cache: only used with --optimize compile")
        cache = Path(args.compile_cache).expanduser()
        if cache.is_dir():
            raise UsageError(f"--compile-cache: {cache} is a folder; name the cache file, e.g. {cache / 'sdxl.bin'}")
        if not cache.exists():
            _check_folder("--compile-cache", cache.parent)  # rank 0 writes it after the warm-up
        options["compile_cache"] = str(cache)
    if args.warmup is not None:
        options["warmup"] = args.warmup
    warmup_size = getattr(args, "warmup_size", None)
    if warmup_size is not None:
        if args.warmup is None:
            raise UsageError("--warmup-size: only used with --warmup N[,N] (the images per worker to warm up)")
        _check_size(family, warmup_size)
        options["warmup_size"] = warmup_size
    elif args.warmup is not None and request_size is not None:
        options["warmup_size"] = request_size
    if args.dtype is not None:
        options["dtype"] = args.dtype
    options.update(_lossy_options(args, family))
    options.update(_preview_options(args, family))
    options.update(_parallel_options(args, family))
    options.update(lora_options(args))
    return options


def _check_size(family: Any, warmup_size: tuple[int, int]) -> None:
    """A warm-up size follows the same rules as a request's width and height."""
    from .errors import InvalidRequestError

    width, height = warmup_size
    try:
        family.validate({"prompt": "warm-up", "width": width, "height": height})
    except InvalidRequestError as exc:
        rules = "; ".join(f"{e.field} {e.message}" for e in exc.errors)
        raise UsageError(f"--warmup-size {width}x{height}: {rules}") from None


def lora_options(args: argparse.Namespace) -> dict[str, Any]:
    """The worker's LoRA ``setup`` arguments (``--lora``, ``--lora-dir``, ``--max-loras``,
    ``--max-lora-bytes``, ``--lora-max-rank``, ``--lora-mode``, ``--lora-layers``), the sources checked before any worker starts."""
    from .diffusion.lora import LoraSources, parse_byte_size

    options: dict[str, Any] = {}
    named: dict[str, str] = {}
    for item in args.lora or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--lora {item!r}: write NAME=PATH")
        if name in named:
            raise UsageError(f"--lora {item!r}: the name {name!r} is given twice")
        named[name] = str(Path(path).expanduser())
    for option, sources in (("--lora", (named, None)), ("--lora-dir", (None, args.lora_dir))):
        try:
            LoraSources(*sources)
        except (ValueError, OSError) as exc:
            raise UsageError(f"{option}: {exc}") from None
    if named:
        options["loras"] = named
    if args.lora_dir is not None:
        options["lora_dir"] = str(Path(args.lora_dir).expanduser())
    if args.max_loras is not None:
        options["max_loras"] = args.max_loras
    if args.lora_max_rank is not None:
        options["lora_max_rank"] = args.lora_max_rank
    if args.lora_layers is not None:
        options["lora_layers"] = args.lora_layers
    if args.lora_mode is not None:
        options["lora_mode"] = args.lora_mode
    if args.max_lora_bytes is not None:
        try:
            options["max_lora_bytes"] = parse_byte_size(args.max_lora_bytes)
        except ValueError as exc:
            raise UsageError(f"--max-lora-bytes: {exc}") from None
        if options["max_lora_bytes"] < 1:
            raise UsageError("--max-lora-bytes: must be more than 0")
    return options


def _parallel_options(args: argparse.Namespace, family: Any) -> dict[str, Any]:
    """``--parallel``, checked against the family, the worker count and the device (the
    rules :meth:`DiffusionWorker.setup` applies again in every worker)."""
    if getattr(args, "parallel", None) is None:
        return {}
    import torch

    from .diffusion.parallel import Parallelism, check_parallel

    gpus = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    # Unknown here (a Ray head may have no GPU): left to the workers' own check.
    device = args.device or ("cuda" if gpus else None)
    workers = args.workers or (gpus if device == "cuda" else 1) or None
    try:
        parallel = Parallelism.parse(args.parallel)
        check_parallel(parallel, family, workers, device, args.dtype, args.step_cache)
    except ValueError as exc:
        text = str(exc).replace("step_cache:", "--step-cache:")
        raise UsageError(f"--parallel {args.parallel}: {text}") from None
    return {"parallel": args.parallel}


_LOSSY_FLAGS = {"quantize": "--quantize", "step_cache": "--step-cache", "cpu_offload": "--cpu-offload"}


def _lossy_options(args: argparse.Namespace, family: Any) -> dict[str, Any]:
    """``--quantize``, ``--step-cache`` and ``--cpu-offload``, checked where they will run (the
    workers' device) before any worker starts."""
    from .diffusion.lossy import check_lossy

    options = {
        name: value
        for name, value in (("quantize", args.quantize), ("step_cache", args.step_cache),
                            ("cpu_offload", args.cpu_offload or None))
        if value is not None
    }
    if not options:
        return options
    device = args.device or _default_device()
    try:
        check_lossy(family, device, args.optimize or "auto", args.quantize, args.step_cache)
    except ValueError as exc:
        flags = {**_LOSSY_FLAGS, "optimize": "--optimize"}
        text = re.sub(r"\b(quantize|step_cache|optimize)(=| )", lambda m: flags[m.group(1)] + " ", str(exc))
        raise UsageError(text) from None
    if args.cpu_offload:
        if device != "cuda":
            raise UsageError("--cpu-offload: moves models to a GPU while they run; needs --device cuda")
        if family.denoiser == "unet" and (args.optimize or "auto") != "none":
            raise UsageError(f"--cpu-offload: {family.title} needs --optimize none (its CUDA graphs hold GPU addresses)")
    return options


def _preview_options(args: argparse.Namespace, family: Any) -> dict[str, Any]:
    """``serve``'s ``--preview`` and ``--preview-model`` (``generate`` streams no previews); a
    local TAESD folder must decode the family's latents."""
    preview, preview_model = getattr(args, "preview", None), getattr(args, "preview_model", None)
    options: dict[str, Any] = {}
    if preview is not None:
        options["preview"] = None if preview == "none" else preview
    if preview_model is None:
        return options
    if preview in ("linear", "none"):
        raise UsageError(f"--preview-model: only used with --preview taesd or auto, not --preview {preview}")
    from ._hub import looks_like_path
    from .diffusion.models import preview_latent_mismatch

    if looks_like_path(preview_model) and not Path(preview_model).expanduser().is_dir():
        raise UsageError(f"--preview-model: no such folder: {preview_model}")

    mismatch = preview_latent_mismatch(family, preview_model)
    if mismatch:
        raise UsageError(f"--preview-model: {mismatch}")
    options["preview_model"] = preview_model
    return options


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_serve_options(args: argparse.Namespace) -> None:
    """The queue and merging limits of ``serve`` (also with ``--ray``), before anything starts."""
    if args.max_queue < 0:
        raise UsageError(f"--max-queue: must be 0 or more, got {args.max_queue}")
    if args.max_batch < 0:
        raise UsageError(f"--max-batch: must be 0 or more (0 or 1: no merging), got {args.max_batch}")
    if args.max_batch_units is not None and args.max_batch_units < 1:
        raise UsageError(f"--max-batch-units: must be at least 1, got {args.max_batch_units}")
    for flag, value in (("--batch-wait", getattr(args, "batch_wait", None)),
                        ("--drain-timeout", getattr(args, "drain_timeout", None))):
        if value is not None and not value >= 0:
            raise UsageError(f"{flag}: must be 0 or more seconds, got {value}")


def batch_options(args: argparse.Namespace) -> dict[str, Any]:
    """The runner's merging options from ``serve``'s arguments."""
    options: dict[str, Any] = {"max_batch": args.max_batch, "max_batch_units": args.max_batch_units}
    if getattr(args, "batch_wait", None) is not None:
        options["batch_wait"] = args.batch_wait
    return options


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
