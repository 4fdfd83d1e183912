"""CFG-2 SDXL through the runner on two gloo ranks (one group of two): a stream left early
stops both ranks of the pair at a step boundary, and a rank killed inside the group gets the
whole group rebuilt so the next request succeeds. One started runner for the module."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gridgen import DistributedRunner, WorkerDiedError

# The module's processes start (and, once, restart) inside the first test's time: two ranks
# importing diffusers take 10 s on two idle cores, 30 s on a loaded machine.
pytestmark = pytest.mark.timeout(240)

SMALL: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}
LONG = {**SMALL, "width": 128, "height": 128, "num_inference_steps": 150, "preview_every": 1}
"""150 steps: many seconds when run to the end, so an early stop is visible."""


@pytest.fixture(scope="module")
def cfg2(tiny_cache: str) -> Iterator[Any]:
    from gridgen.sdxl import SDXLWorker

    runner = DistributedRunner(SDXLWorker, world_size=2, device="cpu", auto_restart=True)
    with runner.sync(model="tiny", parallel={"cfg": 2}) as sync:
        yield sync


def test_one_image_by_default_and_a_left_stream_stops_the_pair(cfg2: Any) -> None:
    first = cfg2.invoke({**SMALL, "seed": 3})
    assert first["num_images"] == 1 and first["seeds"] == [3]  # one group: one image by default
    pids = cfg2.runner.pids
    steps, seen = [], []
    for item in cfg2.stream(LONG):
        steps.append(item["step"])
        seen.append(time.monotonic())
        if len(steps) == 3:
            break  # closing the stream cancels the request on both ranks of the pair
    left = time.monotonic()
    result = cfg2.invoke({**SMALL, "num_images": 2, "seed": 8})
    waited = time.monotonic() - left
    step_time = (seen[2] - seen[0]) / 2
    assert steps == [1, 2, 3] and result["seeds"] == [8, 9]
    assert cfg2.runner.pids == pids  # stopped together at a step: the group was not rebuilt
    assert waited < 40 * step_time + 1, f"waited {waited:.1f} s at {step_time:.3f} s a step"


def test_a_rank_killed_inside_the_group_rebuilds_it(cfg2: Any) -> None:
    pids = cfg2.runner.pids

    def kill_rank_1_once_streaming() -> None:
        time.sleep(0.5)
        os.kill(pids[1], signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1_once_streaming)
    with pytest.raises(WorkerDiedError) as caught:
        for item in cfg2.stream(LONG):
            if item["step"] == 1:
                killer.start()
    killer.join()
    assert caught.value.rank == 1 and caught.value.signal == "SIGKILL"
    result = cfg2.invoke({**SMALL, "seed": 4}, timeout=120)  # after the rebuild (auto_restart)
    assert result["seeds"] == [4]
    assert cfg2.runner.pids[0] != pids[0] and cfg2.runner.pids[1] != pids[1]
