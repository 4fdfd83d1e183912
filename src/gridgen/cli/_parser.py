"""The ``gridgen`` command's arguments: one parser, ``generate`` and ``serve`` subcommands.

Each subcommand names its handler (``args.handler``); :func:`gridgen.cli.main` imports it
only once the arguments parsed, so ``--help`` answers without importing the handlers' needs.
"""

from __future__ import annotations

import argparse

from .._preflight import int_list, port_number, positive_int, size

__all__ = ["build_parser"]


# -- arguments -------------------------------------------------------------------------


def _add_runner_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and workers")
    group.add_argument(
        "--model",
        default=None,
        metavar="tiny|ID|PATH",
        help='"tiny", "tiny-flux" or "tiny-sd3" (built-in tiny SDXL, FLUX.1-dev or SD3.5 with '
        'random weights: no download, noise images), "sdxl-random", "flux-random", '
        '"flux-schnell-random" or "sd3-random" (full size, random weights, for GPU benchmarks), '
        'a Hugging Face hub id or '
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
    group.add_argument(
        "--parallel",
        default=None,
        metavar="cfg=2,ulysses=2",
        help="split one image over a group of workers: cfg=2 (SDXL, SD3.5: the two guidance "
        "branches), ulysses=N or ring=N (FLUX.1: the sequence); the groups share the images "
        "(workers = groups x cfg x ulysses x ring; docs/parallelism.md)",
    )
    speed = parser.add_argument_group("speed (GPU; docs/performance.md)")
    speed.add_argument("--optimize", choices=("auto", "graphs", "compile", "none"), default=None,
                       help="auto (default: CUDA graphs on GPUs for SDXL, fused attention projections "
                       "for FLUX.1/SD3.5), graphs, compile (fastest; compiles each batch shape once, "
                       "about a minute) or none")
    speed.add_argument("--warmup", type=int_list, default=None, metavar="N[,N]",
                       help="images per worker to warm up at start, e.g. 1,8: those shapes are "
                       "compiled before the first request and, optimised, the only merge sizes")
    speed.add_argument("--warmup-size", type=size, default=None, metavar="WxH",
                       help="image size of the warm-up, e.g. 512x512 (default: generate's "
                       "--width/--height; serve: 1024x1024)")
    speed.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                       help="weights and activations (default on GPUs: fp16 for SDXL, bf16 for FLUX.1 "
                       "and SD3.5, which overflow fp16; fp32 on CPU); bf16 SDXL is about 3 %% faster "
                       "on an H200 and less precise")
    speed.add_argument("--quantize", choices=("fp8",), default=None,
                       help="fp8: float8 weights and activations in FLUX.1/SD3.5's transformer (needs "
                       "--optimize compile, torchao and a GPU of compute capability 8.9+; changes the "
                       "images, see docs/flux.md)")
    speed.add_argument("--step-cache", type=float, default=None, metavar="T",
                       help="FLUX.1: skip the rest of a step's transformer blocks when its first block "
                       "moved less than T (0-1, e.g. 0.08; diffusers' first-block cache; changes the images)")
    speed.add_argument("--cpu-offload", action="store_true",
                       help="keep the text encoders and the VAE on the CPU and move each to the GPU "
                       "while it runs (the denoiser stays): about 5 GiB off FLUX.1-dev's peak, slower")
    speed.add_argument("--compile-cache", default=None, metavar="FILE",
                       help="with --optimize compile: load compiled kernels from FILE, or write it "
                       "after the warm-up when missing (default: $GRIDGEN_COMPILE_CACHE)")
    adapters = parser.add_argument_group("LoRA adapters (docs/lora.md)")
    adapters.add_argument("--lora", action="append", default=None, metavar="NAME=PATH",
                          help="register a LoRA adapter (a .safetensors file or a folder holding one) "
                          "under NAME; repeatable. Requests name adapters, never paths")
    adapters.add_argument("--lora-dir", default=None, metavar="DIR",
                          help="register every DIR/*.safetensors as an adapter named by its file "
                          "stem; files added later are found without a restart")
    adapters.add_argument("--max-loras", type=positive_int, default=None, metavar="N",
                          help="adapters each worker keeps loaded, least recently used unloaded "
                          "first (default 8)")
    adapters.add_argument("--max-lora-bytes", default=None, metavar="SIZE",
                          help="bytes of adapter weights each worker keeps loaded, e.g. 512M or "
                          "2G (default 4G)")
    adapters.add_argument("--lora-max-rank", type=positive_int, default=None, metavar="R",
                          help="with --lora-mode slot: the rank of the slot adapters are written into, "
                          "at least the sum of the ranks one request combines (default 64)")
    adapters.add_argument("--lora-mode", choices=("fuse", "slot"), default=None,
                          help="with --optimize on: add adapters into the weights (default: free "
                          "per step, keeps a copy of each adapted weight) or run them through a "
                          "low-rank slot (no copy, a cost on every step)")
    adapters.add_argument("--lora-layers", choices=("attention", "all"), default=None,
                          help="with --lora-mode slot: the layers the slot covers, the attention "
                          "projections (default: what trainers target, and cheaper) or every "
                          "Linear layer of the transformer blocks")
    group.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the workers' model-loading output and full tracebacks",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``gridgen`` argument parser (``generate`` and ``serve``)."""
    from .. import __version__

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
    req.add_argument("--image", default=None, metavar="FILE",
                     help="start image (PNG, JPEG or WebP) for image-to-image; resized to --width x --height")
    req.add_argument("--strength", type=float, default=None, metavar="S",
                     help="with --image: how much to change it, 0 (keep) to 1 (start from noise)")
    req.add_argument("--mask", default=None, metavar="FILE",
                     help="with --image: inpainting mask of the image's size; white repaints, black keeps")
    req.add_argument(
        "--use-lora", action="append", default=None, metavar="NAME[:SCALE]",
        help="apply a registered LoRA adapter (see --lora, --lora-dir) at SCALE (-2 to 2, "
        "default 1); repeatable, up to 4",
    )
    out = gen.add_argument_group("output")
    out.add_argument(
        "-o", "--output", default="grid.png", metavar="FILE",
        help="grid image to write; the extension picks the format (.png, .jpg, .webp); "
        "missing folders are created; DIR/ writes DIR/grid.png (default: %(default)s)",
    )
    out.add_argument(
        "--save-dir", default=None, metavar="DIR",
        help="also write each image to DIR as NN-seedS.<ext> (created if missing)",
    )
    out.add_argument(
        "--preview-every", type=int, default=1, metavar="K",
        help="progress updates every K steps (0: no progress bar; default: %(default)s)",
    )
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show the progress bar on stderr (default: only when stderr is a terminal)",
    )
    _add_runner_options(gen)
    gen.set_defaults(handler="generate")


def _add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API and the playground page",
        description="Start the workers and serve POST /generate, POST /stream (server-sent "
        "events), the OpenAI-compatible /v1/images/generations, /v1/images/edits and /v1/models, "
        "GET /health, GET /ready and the playground page at / with uvicorn. Without --api-key "
        "the service has no authentication: keep it on loopback or behind a proxy that has. The "
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
        "--batch-wait", type=float, default=None, metavar="SECONDS",
        help="once a request is taken, wait this long for more of its shape to merge with it "
        "(default: the runner's, 0.02; 0: merge only what is already queued)",
    )
    serve.add_argument(
        "--drain-timeout", type=float, default=30.0, metavar="SECONDS",
        help="on SIGTERM or Ctrl-C: how long queued and running requests get to finish "
        "while new ones get 503; then they are cancelled (default: %(default)s)",
    )
    serve.add_argument(
        "--log-format", default="text", choices=("text", "json"),
        help="text, or json: one JSON object per line, with the request id (default: %(default)s)",
    )
    serve.add_argument(
        "--api-key", action="append", default=None, metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every route but /health, /ready and the "
        "playground page (repeat for several keys; also $GRIDGEN_API_KEY, comma-separated)",
    )
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn and gridgen log level (default: %(default)s)",
    )
    _add_runner_options(serve)
    previews = serve.add_argument_group("previews (streamed every preview_every steps)")
    previews.add_argument(
        "--preview", choices=("auto", "taesd", "linear", "none"), default=None,
        help="taesd (decode with a tiny autoencoder of the family's latent space: a recognisable "
        "image for about 5 %% of the VAE's cost), linear (a fixed latent-to-RGB map at 1/4 of the "
        "image size; no weights), none (progress only) or auto (default: taesd with "
        "--preview-model, else linear)",
    )
    previews.add_argument(
        "--preview-model", default=None, metavar="ID|PATH",
        help="the TAESD to load: a hub id or folder (default with --preview taesd: "
        "madebyollin/taesdxl, taef1 or taesd3 by family; the tiny models' own)",
    )
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
    serve.set_defaults(handler="serve")


