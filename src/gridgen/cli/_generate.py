"""``gridgen generate``: one request, its grid (and images) written to files."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from .._preflight import (
    UsageError,
    check_device,
    check_model,
    check_outputs,
    output_file,
    worker_options,
)
from ._common import default_model, describe, err, model_family, quiet_workers, worker_class

__all__ = ["run"]


def _request_payload(args: argparse.Namespace) -> dict[str, Any]:
    from ..images import FILE_SUFFIXES

    suffix = Path(args.output).suffix.lower()
    image_format = FILE_SUFFIXES.get(suffix)
    if image_format is None:
        raise UsageError(
            f"-o/--output: cannot tell the image format from {suffix or 'no extension'!r} "
            f"(use one of {', '.join(sorted(FILE_SUFFIXES))})"
        )
    if args.preview_every < 0:
        raise UsageError(f"--preview-every: must be 0 or more, got {args.preview_every}")
    options = {
        "negative_prompt": args.negative_prompt,
        "num_images": args.num_images,
        "num_inference_steps": args.steps,
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "guidance_scale": args.guidance,
    }
    payload: dict[str, Any] = {"prompt": args.prompt}
    payload.update({k: v for k, v in options.items() if v is not None})
    for name in ("image", "mask"):
        path = getattr(args, name, None)
        if path is not None:
            payload[name] = _file_data_url(path, f"--{name}")
    if getattr(args, "strength", None) is not None:
        payload["strength"] = args.strength
    payload["preview_every"] = args.preview_every
    payload["image_format"] = image_format
    payload["output"] = "both" if args.save_dir else "grid"
    if args.use_lora:
        payload["loras"] = [_lora_spec(item) for item in args.use_lora]
    return payload


def _file_data_url(path: str, option: str) -> str:
    """An input image file as a data URL (checked on the host with the rest of the request)."""
    import base64

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode("ascii")


def _lora_spec(item: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:SCALE`` (``--use-lora``) as a ``loras`` entry."""
    name, sep, scale = item.rpartition(":") if ":" in item else (item, "", "")
    if not sep:
        return {"name": item}
    try:
        return {"name": name, "scale": float(scale)}
    except ValueError:
        raise UsageError(f"--use-lora {item!r}: SCALE must be a number, e.g. {name}:0.8") from None


_OPTION_NAMES = {
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "prompt": "PROMPT",
    "preview_every": "--preview-every",
    "image_format": "-o/--output",
}


def _validate(payload: dict[str, Any], family: Any) -> Any:
    """The validated request, or a usage error naming the flags."""
    from ..errors import InvalidRequestError

    try:
        return family.validate(payload)
    except InvalidRequestError as exc:
        lines = []
        for error in exc.errors:
            option = _OPTION_NAMES.get(error.field, "--" + error.field.replace("_", "-"))
            if error.field.startswith("loras"):
                option = "--use-lora"
            # The request's field names (the HTTP API's) mean nothing here: the flag says it.
            message = re.sub(r" \(allowed: [^)]*\)$", "", error.message)
            lines.append(f"  {option} ({error.field}): {message} [rule: {error.rule}]")
        raise UsageError("invalid request:\n" + "\n".join(lines)) from None


def _check_loras(payload: dict[str, Any], options: dict[str, Any]) -> None:
    """Every ``--use-lora`` adapter is registered by ``--lora`` / ``--lora-dir``."""
    if not payload.get("loras"):
        return
    from ..diffusion.lora import LoraSources, LoraSpec
    from ..errors import InvalidRequestError

    try:
        LoraSources.from_setup(options).check([LoraSpec(**spec) for spec in payload["loras"]])
    except InvalidRequestError as exc:
        raise UsageError(f"--use-lora: {exc.errors[0].message} (register it with --lora NAME=PATH "
                         "or --lora-dir DIR)") from None


async def _run_generate(args: argparse.Namespace, payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from tqdm import tqdm

    from .._requests import StreamResult
    from ..runner import DistributedRunner

    model = args.model or default_model()
    runner = DistributedRunner(
        worker_class(model),
        world_size=args.workers,
        device=args.device,
        # The CLI shows progress, not previews: step events without preview images cost nothing.
        setup_kwargs={"model": model, "preview": None, **options},
        prefix_output=True,
    )
    err(f"gridgen: starting {runner.world_size} worker(s) on {describe(runner.devices)} with model {model!r}...")
    started = time.perf_counter()
    async with runner:
        startup = time.perf_counter() - started
        handle = runner.submit(payload, streaming=True)
        bar: Any = None
        result: Any = None
        # A bar written to a log file or a pipe is noise (and a line of spaces when it closes).
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        try:
            async for event in handle.updates():
                value = event.value
                if isinstance(event, StreamResult):
                    result = value
                    continue
                if progress and isinstance(value, dict) and "total_steps" in value:
                    if bar is None:
                        bar = tqdm(
                            total=int(value["total_steps"]), desc="denoising", unit="step",
                            file=sys.stderr, dynamic_ncols=True, leave=False, disable=False,
                        )
                    bar.update(int(value["step"]) - bar.n)
        finally:
            if bar is not None:
                bar.close()
    if not isinstance(result, dict) or "seeds" not in result:
        raise RuntimeError(f"the workers returned no result (got {type(result).__name__})")
    result["_startup_seconds"] = startup
    return dict(result)


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    written = []
    output = Path(args.output)  # its folder, and --save-dir, exist: _check_outputs made them
    output.write_bytes(_image_bytes(result["grid"]))
    written.append(output)
    if args.save_dir:
        folder = Path(args.save_dir)
        from ..images import FILE_SUFFIXES, FORMATS

        ext = FORMATS[FILE_SUFFIXES[output.suffix.lower()]].extension
        for i, (image, seed) in enumerate(zip(result["images"], result["seeds"], strict=True)):
            path = folder / f"{i:02d}-seed{seed}.{ext}"
            path.write_bytes(_image_bytes(image))
            written.append(path)
    return written


def _image_bytes(image: Any) -> bytes:
    from ..images import image_bytes

    return image_bytes(image).data  # a decoded image keeps its bytes: no re-encoding


def _summary(result: dict[str, Any], written: list[Path]) -> str:
    seeds = list(result["seeds"])
    seed_text = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
    t = result.get("timings", {})
    parts = [f"{k} {float(t[k]):.2f}s" for k in ("denoise", "decode", "gather", "encode") if t.get(k) is not None]
    extra = f" (+{len(written) - 1} images)" if len(written) > 1 else ""
    return (
        f"wrote {written[0]}{extra}: {result['num_images']} image(s) {result['width']}x{result['height']}, "
        f"seeds {seed_text}; total {float(t.get('total', 0.0)):.2f}s ({', '.join(parts)}); "
        f"workers started in {result['_startup_seconds']:.1f}s"
    )


def run(args: argparse.Namespace) -> int:
    args.output = output_file(args.output)
    payload = _request_payload(args)
    family = model_family(args.model or default_model())
    request = _validate(payload, family)  # exit 2 here, before any worker starts
    options = worker_options(args, family, request_size=(request.width, request.height))
    _check_loras(payload, options)
    check_outputs(args)
    check_device(args)
    check_model(args.model)
    quiet_workers(args.verbose)
    if not args.verbose:
        # The CLI reports a failure in one line; the workers' logged tracebacks are --verbose.
        logging.getLogger("gridgen").setLevel(logging.CRITICAL)
    result = asyncio.run(_run_generate(args, payload, options))
    written = _write_outputs(args, result)
    print(_summary(result, written), flush=True)
    return 0
