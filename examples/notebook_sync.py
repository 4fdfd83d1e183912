"""The blocking facade, for notebooks and plain scripts: no ``async``/``await``.

    python examples/notebook_sync.py -o sync_grid.png

``runner.sync(**setup_kwargs)`` runs the runner on an event loop in a background
thread; ``invoke`` blocks for the result and ``stream`` is a plain iterator.
Ctrl-C while waiting cancels the request on every rank.

In a notebook, paste the body of ``main`` into cells; keep the ``with`` block open
(or call ``sync.start()`` once and ``sync.stop()`` at the end) so the workers stay
loaded between cells. The worker class here comes from a module (``gridgen.sdxl``);
one defined in a notebook cell works as well: gridgen sends it to the spawned workers
by value (``examples/notebook_worker.ipynb``, and docs/concepts.md, "Where the worker
class can live").
"""

from __future__ import annotations

import argparse
import os

from gridgen import DistributedRunner
from gridgen.sdxl import SDXLWorker

SMALL = {"width": 64, "height": 64, "num_inference_steps": 4}  # tiny sizes for a CPU demo


def main(output: str) -> None:
    runner = DistributedRunner(SDXLWorker, world_size=2, device="cpu")
    with runner.sync(model="tiny") as sync:  # start(model="tiny"); stop() when leaving
        result = sync.invoke({"prompt": "a red bicycle", "num_images": 2, "seed": 1, **SMALL})
        print(f"invoke: {result['num_images']} images, seeds {result['seeds']}")
        result["grid"].save(output)  # in a notebook, `result["grid"]` displays the image
        print(f"saved {output}")

        request = {"prompt": "a red bicycle", "num_images": 4, "preview_every": 2, **SMALL}
        for item in sync.stream(request):
            if "step" in item:
                print(
                    f"stream: step {item['step']}/{item['total_steps']}, preview {item['preview_image'].size}"
                )
            else:
                print(f"stream: done in {item['timings']['total']:.2f}s")


if __name__ == "__main__":  # good style; not required: the workers do not run this script again
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="sync_grid.png")
    main(parser.parse_args().output)
