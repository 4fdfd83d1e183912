"""Make a grid of images with the SDXL worker on two ranks and save it.

    python examples/make_grid.py "a lighthouse at dawn" -o grid.png

Runs on CPU with the built-in ``tiny`` model (random weights: the images are
noise, but every step of the real pipeline runs). On a GPU machine pass
``--device cuda --model stabilityai/stable-diffusion-xl-base-1.0`` and real sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from gridgen import DistributedRunner
from gridgen.sdxl import SDXLWorker


async def main(args: argparse.Namespace) -> None:
    runner = DistributedRunner(SDXLWorker, world_size=args.workers, device=args.device)
    # start(**kwargs) runs SDXLWorker.setup(**kwargs) on every rank.
    await runner.start(model=args.model)
    try:
        result = await runner.invoke(
            {
                "prompt": args.prompt,
                "num_images": args.num_images,
                "width": args.size,
                "height": args.size,
                "num_inference_steps": args.steps,
                "seed": args.seed,
            }
        )
    finally:
        await runner.stop()

    grid = result["grid"]  # a PIL image, decoded from the PNG the worker encoded
    grid.save(args.output)
    print(f"saved {args.output}: {grid.width}x{grid.height}, seeds {result['seeds']}")
    print(f"timings (s): {result['timings']}")


if __name__ == "__main__":  # good style; not required: the workers do not run this script again
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="a lighthouse at dawn")
    parser.add_argument("-o", "--output", default="grid.png")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
