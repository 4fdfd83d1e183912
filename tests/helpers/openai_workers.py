"""An SDXL worker (tiny model) that fails or holds on request, for the OpenAI routes' error paths.

``prompt="raise"`` raises on every rank before any collective (a 500 that leaves the group
healthy); ``prompt="hold"`` keeps the ranks busy until the request is cancelled (the
cancel check is collective, so both ranks leave together).
"""

from __future__ import annotations

import time
from typing import Any

from gridgen import Batch
from gridgen.sdxl import SDXLWorker


class FlakySDXLWorker(SDXLWorker):
    def run_batch(self, batch: Batch) -> list[Any]:
        prompts = [item.payload.get("prompt") for item in batch]
        if "raise" in prompts:
            raise RuntimeError("failed on purpose")
        if "hold" in prompts:
            while not all(batch.cancelled()):
                time.sleep(0.05)
            from gridgen.errors import Cancelled

            raise Cancelled("held until cancelled")
        return super().run_batch(batch)
