"""Cancelling: every rank stops at the same step, nobody waits in a collective, the next request runs."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from gridgen import Cancelled

from helpers.sdxl import SMALL, pixels

LONG = {**SMALL, "width": 256, "height": 256, "num_inference_steps": 150, "preview_every": 1}
"""150 steps at 256x256: many seconds when run to the end, so an early stop is visible."""


def test_direct_worker_stops_at_the_step_should_stop_turns_true(
    direct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = direct(**SMALL, num_images=2, seed=21, output="images")
    calls: list[int] = []

    def stop_at_second_step() -> bool:
        calls.append(1)
        return len(calls) >= 2

    monkeypatch.setattr(direct, "should_stop", stop_at_second_step)
    direct.streamed.clear()
    with pytest.raises(Cancelled, match="step 2"):
        direct(streaming=True, **SMALL, num_images=2, seed=21, preview_every=1)
    assert len(calls) == 2, "no step may run (or check again) after the stop"
    assert [e["step"] for e in direct.streamed] == [1]
    monkeypatch.undo()

    # nothing is left over: the next request gives the same images as before
    after = direct(**SMALL, num_images=2, seed=21, output="images")
    for a, b in zip(reference["images"], after["images"], strict=True):
        assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("num_images", [3, 1], ids=["both-ranks-busy", "rank-1-idle"])
def test_leaving_a_stream_stops_every_rank_promptly(sdxl2: Any, num_images: int) -> None:
    pids = sdxl2.runner.pids
    steps, seen = [], []
    for item in sdxl2.stream({**LONG, "num_images": num_images}):
        steps.append(item["step"])
        seen.append(time.monotonic())
        if len(steps) == 3:
            break  # closing the stream cancels the request on every rank
    left = time.monotonic()
    result = sdxl2.invoke({**SMALL, "num_images": 2, "seed": 8})
    waited = time.monotonic() - left
    step_time = (seen[2] - seen[0]) / 2
    assert steps == [1, 2, 3]
    assert result["seeds"] == [8, 9]
    # the ranks stopped at a step boundary by themselves: the group was not rebuilt
    assert sdxl2.runner.pids == pids
    # 147 steps were left; the next request started long before they could have run
    assert waited < 40 * step_time + 1, f"waited {waited:.1f} s at {step_time:.3f} s a step"
