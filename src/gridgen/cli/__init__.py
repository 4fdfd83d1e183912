"""The ``gridgen`` command: ``gridgen generate`` (images to files) and ``gridgen serve`` (HTTP).

Quick start, on CPU with the built-in tiny model (random weights: the images are noise)::

    gridgen generate "a lighthouse at dawn" --model tiny --workers 2 --device cpu \\
        --width 256 --height 256 --steps 4 -o grid.png

One module per job: ``_parser`` (the arguments), ``_generate`` and ``_serve`` (the
subcommands), ``_ray`` (``serve --ray``), ``_common`` (what they share). Heavy imports
(torch, diffusers, FastAPI) happen after the arguments are parsed and the request is
validated, so ``--help`` and input errors answer at once. Exit status: 0 done, 1 failed
while running, 2 bad arguments, request, output path, model, device or port (found before
any worker starts), 130 interrupted.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from .._preflight import UsageError
from ._common import err
from ._parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gridgen`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        handler = importlib.import_module(f"{__name__}._{args.handler}")
        status: int = handler.run(args)
        return status
    except UsageError as exc:
        err(f"gridgen {args.command}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        err("gridgen: interrupted")
        return 130
    except Exception as exc:
        if getattr(args, "verbose", False):
            raise
        # A WorkerError's str() ends with the remote traceback: the first line says enough.
        message = str(exc.args[0]) if exc.args else str(exc)
        err(f"gridgen {args.command}: failed: {type(exc).__name__}: {message}")
        err("(run with --verbose for the full traceback)")
        return 1
