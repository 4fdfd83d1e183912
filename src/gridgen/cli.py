"""The ``gridgen`` command: ``gridgen generate`` (images to files) and ``gridgen serve`` (HTTP).

Quick start, on CPU with the built-in tiny model (random weights: the images are noise)::

    gridgen generate "a lighthouse at dawn" --model tiny --workers 2 --device cpu \\
        --width 256 --height 256 --steps 4 -o grid.png

Heavy imports (torch, diffusers, FastAPI) happen after the arguments are parsed and the
request is validated, so ``--help`` and input errors answer at once. Exit status: 0 done,
1 failed while running, 2 bad arguments, request, output path, model, device or port
(found before any worker starts), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._preflight import (
    UsageError,
    batch_options,
    check_device,
    check_model,
    check_outputs,
    check_serve_options,
    int_list,
    is_loopback,
    listen,
    port_number,
    positive_int,
    worker_options,
)

__all__ = ["build_parser", "main"]

_QUIET_ENV = {
    # Model loading in every worker otherwise prints progress bars and advisories.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",  # diffusers' "Loading pipeline components" bar has no switch of its own
}


# -- arguments -------------------------------------------------------------------------


def _add_runner_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and workers")
    group.add_argument(
        "--model",
        default=None,
        metavar="tiny|ID|PATH",
        help='"tiny", "tiny-flux" or "tiny-sd3" (built-in tiny SDXL, FLUX.1-dev or SD3.5 with '
        'random weights: no download, noise images), "sdxl-random", "flux-random" or '
        '"sd3-random" (full size, random weights, for GPU benchmarks), a Hugging Face hub id or '
        "a local folder with an SDXL, FLUX.1 or SD3.5 pipeline; its model_index.json picks the "
        "family (default: stabilityai/stable-diffusion-xl-base-1.0)",
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="W",
        help="worker processes, one per device (default: the visible GPUs, else 1)",
    )
    group.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="cuda (worker i on cuda:i) or cpu (default: cuda when available, else cpu)",
    )
    speed = parser.add_argument_group("speed (GPU; docs/performance.md)")
    speed.add_argument("--optimize", choices=("auto", "graphs", "compile", "none"), default=None,
                       help="auto (default: CUDA graphs on GPUs), graphs, compile (fastest; SDXL; "
                       "compiles each batch shape once, about a minute) or none")
    speed.add_argument("--warmup", type=int_list, default=None, metavar="N[,N]",
                       help="images per worker to warm up at start, e.g. 1,8: those shapes are "
                       "compiled before the first request and, optimised, the only merge sizes")
    speed.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                       help="weights and activations (default: fp16 on GPUs, fp32 on CPU); bf16 is "
                       "about 3 %% faster on an H200 and less precise")
    speed.add_argument("--compile-cache", default=None, metavar="FILE",
                       help="with --optimize compile: load compiled kernels from FILE, or write it "
                       "after the warm-up when missing (default: $GRIDGEN_COMPILE_CACHE)")
    group.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the workers' model-loading output and full tracebacks",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``gridgen`` argument parser (``generate`` and ``serve``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gridgen",
        description="Generate image grids with SDXL, FLUX.1 or SD3.5 on one worker process per GPU, "
        "from the command line (generate) or over HTTP (serve).",
        epilog='Quick start on CPU: gridgen generate "a lighthouse at dawn" --model tiny '
        "--workers 2 --device cpu --width 256 --height 256 --steps 4 -o grid.png",
    )
    parser.add_argument("--version", action="version", version=f"gridgen {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_generate_parser(commands)
    _add_serve_parser(commands)
    return parser


def _add_generate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gen = commands.add_parser(
        "generate",
        help="generate images for one prompt and write the grid",
        description="Generate --num-images images of PROMPT (image i from seed + i), spread "
        "over the workers, and write them as one grid image. The request is checked before "
        "any worker starts. Unset options take the model family's defaults (SDXL: one image "
        "per worker, 1024x1024, 20 steps, guidance 5.0, a random seed; see the family pages).",
    )
    gen.add_argument("prompt", metavar="PROMPT", help="what to draw")
    req = gen.add_argument_group("request")
    req.add_argument("--negative-prompt", default=None, metavar="TEXT", help="what to steer away from (SDXL, SD3.5)")
    req.add_argument(
        "--num-images", "-n", type=int, default=None, metavar="N",
        help="images to generate (1-64; default: one per worker)",
    )
    req.add_argument(
        "--steps", type=int, default=None, metavar="S", help="denoising steps (1-150; default: the family's, SDXL 20)"
    )
    req.add_argument(
        "--width", type=int, default=None, metavar="W", help="pixels, a multiple of 8 (64-2048; default 1024)"
    )
    req.add_argument(
        "--height", type=int, default=None, metavar="H", help="pixels, a multiple of 8 (64-2048; default 1024)"
    )
    req.add_argument(
        "--seed", type=int, default=None, metavar="S",
        help="seed of image 0 (image i uses seed + i; default: random, printed at the end)",
    )
    req.add_argument(
        "--guidance", type=float, default=None, metavar="G",
        help="guidance scale (0-30; SDXL/SD3.5: <= 1 turns it off; FLUX.1-dev: distilled "
        "guidance; not for FLUX.1-schnell; default: the family's, SDXL 5.0)",
    )
    out = gen.add_argument_group("output")
    out.add_argument(
        "-o", "--output", default="grid.png", metavar="FILE",
        help="grid image to write; the extension picks the format (.png, .jpg, .webp); "
        "missing folders are created (default: %(default)s)",
    )
    out.add_argument(
        "--save-dir", default=None, metavar="DIR",
        help="also write each image to DIR as NN-seedS.<ext> (created if missing)",
    )
    out.add_argument(
        "--preview-every", type=int, default=1, metavar="K",
        help="progress updates every K steps (0: no progress bar; default: %(default)s)",
    )
    _add_runner_options(gen)
    gen.set_defaults(handler=_generate)


def _add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API and the playground page",
        description="Start the workers and serve POST /generate, POST /stream (server-sent "
        "events), GET /health, GET /ready and the playground page at / with uvicorn. The "
        "service has no authentication: keep it on loopback or behind a proxy that has. The "
        "port is bound first, so /health answers while the workers start.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument(
        "--port", type=port_number, default=8000, help="port to listen on (0: any free one; default: %(default)s)"
    )
    serve.add_argument(
        "--max-queue", type=int, default=16, metavar="N",
        help="requests allowed to wait behind the running one; past it: 503 with Retry-After "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--max-batch", type=int, default=8, metavar="N",
        help="most queued requests of the same shape merged into one call (0 or 1: no "
        "merging; default: %(default)s)",
    )
    serve.add_argument(
        "--max-batch-units", type=int, default=None, metavar="N",
        help="most images in one merged call (a larger request still runs alone; "
        "default: no cap)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn and gridgen log level (default: %(default)s)",
    )
    _add_runner_options(serve)
    cluster = serve.add_argument_group("Ray cluster (needs gridgen[ray]; docs/ray.md)")
    cluster.add_argument(
        "--ray", default=None, metavar="ADDRESS",
        help='deploy onto this Ray cluster with Ray Serve ("auto": the cluster this machine '
        "belongs to); --host/--port then set Ray Serve's proxy, and the model and worker "
        "options apply to each replica",
    )
    cluster.add_argument(
        "--replicas", default=None, metavar="N|MIN-MAX",
        help="with --ray: N replicas, or autoscale between MIN and MAX on queue depth (default 1)",
    )
    serve.set_defaults(handler=_serve)


# -- generate ----------------------------------------------------------------------------


def _request_payload(args: argparse.Namespace) -> dict[str, Any]:
    from .images import FILE_SUFFIXES

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
    payload["preview_every"] = args.preview_every
    payload["image_format"] = image_format
    payload["output"] = "both" if args.save_dir else "grid"
    return payload


_OPTION_NAMES = {
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "prompt": "PROMPT",
    "preview_every": "--preview-every",
    "image_format": "-o/--output",
}


def _family(model: str) -> Any:
    """The model's family (:func:`gridgen.diffusion.family_of`), as a usage error if unknown."""
    from .diffusion import family_of

    try:
        return family_of(model)
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None


def _validate(payload: dict[str, Any], family: Any) -> None:
    from .errors import InvalidRequestError

    try:
        family.validate(payload)
    except InvalidRequestError as exc:
        lines = []
        for error in exc.errors:
            option = _OPTION_NAMES.get(error.field, "--" + error.field.replace("_", "-"))
            lines.append(f"  {option} ({error.field}): {error.message} [rule: {error.rule}]")
        raise UsageError("invalid request:\n" + "\n".join(lines)) from None


def _quiet_workers(verbose: bool) -> None:
    if verbose:
        os.environ["GRIDGEN_VERBOSE"] = "1"  # the model libraries' own output, in every worker
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _describe(devices: Sequence[str]) -> str:
    """``cpu`` for two CPU workers, not ``cpu, cpu``; ``cuda:0, cuda:1`` for two GPUs."""
    return devices[0] if len(set(devices)) == 1 else ", ".join(devices)


async def _run_generate(args: argparse.Namespace, payload: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from tqdm import tqdm

    from ._requests import StreamResult
    from .runner import DistributedRunner

    model = args.model or _default_model()
    runner = DistributedRunner(
        _worker_class(model),
        world_size=args.workers,
        device=args.device,
        # The CLI shows progress, not previews: step events without preview images cost nothing.
        setup_kwargs={"model": model, "preview": None, **options},
        prefix_output=True,
    )
    _err(f"gridgen: starting {runner.world_size} worker(s) on {_describe(runner.devices)} with model {model!r}...")
    started = time.perf_counter()
    async with runner:
        startup = time.perf_counter() - started
        handle = runner.submit(payload, streaming=True)
        bar: Any = None
        result: Any = None
        try:
            async for event in handle.updates():
                value = event.value
                if isinstance(event, StreamResult):
                    result = value
                    continue
                if isinstance(value, dict) and "total_steps" in value:
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


def _worker_class(model: str) -> Any:
    """The worker class of ``model``'s family; a built-in tiny model is built once here,
    not in every rank at the same time."""
    from .diffusion import ensure_tiny, worker_for

    if model in ("tiny", "tiny-flux", "tiny-sd3"):
        ensure_tiny(model)
    return worker_for(model)


def _default_model() -> str:
    from .sdxl import DEFAULT_MODEL

    return DEFAULT_MODEL


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> list[Path]:
    written = []
    output = Path(args.output)  # its folder, and --save-dir, exist: _check_outputs made them
    output.write_bytes(_image_bytes(result["grid"]))
    written.append(output)
    if args.save_dir:
        folder = Path(args.save_dir)
        from .images import FILE_SUFFIXES, FORMATS

        ext = FORMATS[FILE_SUFFIXES[output.suffix.lower()]].extension
        for i, (image, seed) in enumerate(zip(result["images"], result["seeds"], strict=True)):
            path = folder / f"{i:02d}-seed{seed}.{ext}"
            path.write_bytes(_image_bytes(image))
            written.append(path)
    return written


def _image_bytes(image: Any) -> bytes:
    from .images import image_bytes

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


def _generate(args: argparse.Namespace) -> int:
    payload = _request_payload(args)
    family = _family(args.model or _default_model())
    _validate(payload, family)  # exit 2 here, before any worker starts
    options = worker_options(args, family)
    check_outputs(args)
    check_device(args)
    check_model(args.model)
    _quiet_workers(args.verbose)
    if not args.verbose:
        # The CLI reports a failure in one line; the workers' logged tracebacks are --verbose.
        logging.getLogger("gridgen").setLevel(logging.CRITICAL)
    result = asyncio.run(_run_generate(args, payload, options))
    written = _write_outputs(args, result)
    print(_summary(result, written), flush=True)
    return 0


# -- serve -------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    if args.ray is not None or args.replicas is not None:
        from .ray._cli import serve_on_ray

        return serve_on_ray(args)
    check_serve_options(args)
    model = args.model or _default_model()
    family = _family(model)
    options = worker_options(args, family)
    check_device(args)
    check_model(args.model)
    listener = listen(args.host, args.port)  # before any worker: a busy port fails at once
    _quiet_workers(args.verbose)
    import uvicorn

    from .runner import DistributedRunner
    from .sdxl import GenerateResult
    from .server import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    worker_cls = _worker_class(model)
    if not is_loopback(args.host):
        _err(f"gridgen: warning: listening on {args.host}: the service has no authentication")
    runner = DistributedRunner(
        worker_cls,
        world_size=args.workers,
        device=args.device,
        setup_kwargs={"model": model, **options},
        max_queue=args.max_queue,
        **batch_options(args),
        auto_restart=True,  # a worker that died is respawned; the service keeps serving
    )
    server: Any = None
    failures: list[BaseException] = []

    def start_failed(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(
        runner, request_model=family.request_model, response_model=GenerateResult,
        title=f"gridgen · {model}", on_start_failed=start_failed,
    )
    port = listener.getsockname()[1]
    _err(
        f"gridgen: listening on http://{_url_host(args.host)}:{port}/ (GET /ready: 503 until the "
        f"workers are ready); starting {runner.world_size} worker(s) on {_describe(runner.devices)} "
        f"with model {model!r}"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
    server.run(sockets=[listener])
    if failures:
        raise failures[0]
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- entry point -------------------------------------------------------------------------


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gridgen`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
        return status
    except UsageError as exc:
        _err(f"gridgen {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("gridgen: interrupted")
        return 130
    except Exception as exc:
        if getattr(args, "verbose", False):
            raise
        # A WorkerError's str() ends with the remote traceback: the first line says enough.
        message = str(exc.args[0]) if exc.args else str(exc)
        _err(f"gridgen {args.command}: failed: {type(exc).__name__}: {message}")
        _err("(run with --verbose for the full traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
