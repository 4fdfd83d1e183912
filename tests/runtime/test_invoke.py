"""invoke(): the request reaches every rank, rank 0's value comes back, values travel by the codec."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel

from gridgen import PayloadTooLarge, RunnerClosed, WorkerError
from gridgen.testing import ProbeWorker

from helpers.runtime import LiveRunner


def test_invoke_returns_rank0_value(probe: LiveRunner) -> None:
    result = probe.sync.invoke({"op": "echo", "message": "hi"})
    assert result["echo"] == "hi"
    assert result["rank"] == 0
    assert result["world_size"] == 2
    assert result["device"] == "cpu"


def test_every_rank_runs_the_request(probe: LiveRunner) -> None:
    assert probe.sync.invoke({"op": "allreduce"}) == {"sum": 1 + 2}


def test_user_code_runs_on_the_main_thread(probe: LiveRunner) -> None:
    result = probe.sync.invoke({"op": "echo"})
    assert result["main_thread"] is True
    assert result["thread"] == "MainThread"


def test_values_round_trip(probe: LiveRunner) -> None:
    image = Image.new("RGB", (8, 4), (10, 20, 30))
    value = {
        "text": "é", "n": 3, "x": 1.5, "none": None, "flag": True, "blob": b"\x00\x01",
        "list": [1, [2, 3]], "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "tensor": torch.arange(4, dtype=torch.bfloat16), "image": image,
    }
    out = probe.sync.invoke({"op": "value", "value": value})
    assert out["text"] == "é" and out["n"] == 3 and out["x"] == 1.5 and out["none"] is None
    assert out["flag"] is True and out["blob"] == b"\x00\x01" and out["list"] == [1, [2, 3]]
    np.testing.assert_array_equal(out["array"], value["array"])
    assert isinstance(out["tensor"], torch.Tensor) and out["tensor"].dtype == torch.bfloat16
    assert torch.equal(out["tensor"], value["tensor"])
    assert out["image"].size == (8, 4) and out["image"].convert("RGB").getpixel((0, 0)) == (10, 20, 30)


def test_unsupported_payload_fails_in_the_caller(probe: LiveRunner) -> None:
    with pytest.raises(TypeError, match="object"):
        probe.sync.invoke({"op": "value", "value": object()})


def test_errors_in_user_code_are_typed(probe: LiveRunner) -> None:
    with pytest.raises(WorkerError) as info:
        probe.sync.invoke({"op": "raise", "on_rank": 1, "peers": "return", "message": "unknown op"})
    assert info.value.rank == 1  # only rank 1 raised; rank 0 returned
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "unknown op"
    assert "Traceback" in info.value.remote_traceback
    assert 'in _misbehave\n    raise ValueError' in info.value.remote_traceback
    assert info.value.request_id is not None


class Request(BaseModel):
    op: str = "echo"
    message: str


def test_pydantic_models_are_accepted_as_payloads(probe: LiveRunner) -> None:
    assert probe.sync.invoke(Request(message="model"))["echo"] == "model"


def test_payload_rules(probe: LiveRunner) -> None:
    # a "streaming" key is the runner's to set (invoke: False), as in fal: the caller's is replaced
    assert probe.sync.invoke({"op": "echo", "message": "m", "streaming": True})["echo"] == "m"
    with pytest.raises(TypeError, match="keys must be str"):
        probe.sync.invoke({1: "x"})
    with pytest.raises(TypeError, match="dict"):
        probe.sync.invoke(["not", "a", "dict"])


def test_payload_over_the_size_limit_fails_before_sending() -> None:
    from helpers.runtime import live

    with live(ProbeWorker, world_size=1, max_message_bytes=1024) as rt:
        with pytest.raises(PayloadTooLarge):
            rt.sync.invoke({"op": "value", "value": b"x" * 4096})
        assert rt.sync.invoke({"op": "value", "value": b"x" * 10}) == b"x" * 10


def test_invoke_before_start_raises_runner_closed() -> None:
    import asyncio

    from gridgen import DistributedRunner

    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    with pytest.raises(RunnerClosed, match="not started"):
        asyncio.run(runner.invoke({"op": "echo"}))


def test_unsupported_result_type_reaches_the_caller_as_type_error(probe: LiveRunner) -> None:
    with pytest.raises(WorkerError) as info:
        probe.sync.invoke({"op": "unencodable"})
    assert info.value.rank == 0
    assert info.value.remote_type == "TypeError"
    assert "['bad']: objects of type _thread.lock are not supported" in info.value.remote_message


def test_cpu_ranks_share_the_cores(probe: LiveRunner) -> None:
    import os

    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: the runner leaves the thread count to it")
    cores = len(os.sched_getaffinity(0))
    assert probe.sync.invoke({"op": "threads"}) == max(1, cores // 2)
