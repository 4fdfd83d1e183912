"""fal behaviours on the host side, in gridgen's own API, on two CPU ranks.

Call signatures (payload optional, positional timeout, ``streaming_timeout``), a
keepalive interval alone, ``is_alive``/``ensure_alive``/``terminate``/``gather_errors``,
``start()`` after ``stop()``, fal's constructor keywords, pydantic payloads.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import AnyUrl, BaseModel, HttpUrl

from gridgen import (
    DistributedRunner,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    WorkerDiedError,
)
from gridgen.testing import ProbeWorker

from helpers.fal_workers import CompatWorker
from helpers.runtime import LiveRunner, live


@pytest.fixture(scope="module")
def compat() -> Iterator[LiveRunner]:
    with live(CompatWorker, error_grace=2.0) as rt:
        yield rt


def run(coro_fn: Any, timeout: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout))


# -- call signatures ------------------------------------------------------------------------


def test_invoke_without_a_payload_and_with_a_positional_timeout(compat: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> Any:
        return await runner.invoke(), await runner.invoke({"op": "info"}, 30)

    bare, timed = compat.run(body)
    assert bare["payload_keys"] == [] and timed["rank"] == 0


def test_a_positional_invoke_timeout_is_the_request_time_limit(compat: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> None:
        await runner.invoke({"op": "sleep", "items": 1, "delay": 2.0}, 0.2)

    with pytest.raises(RequestTimeout):
        compat.run(body)


def test_stream_without_a_payload_and_with_positional_arguments(compat: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> tuple[list[Any], list[Any]]:
        bare = [item async for item in runner.stream()]
        # payload, timeout, streaming_timeout, as_text_events: fal's order
        texts = [item async for item in runner.stream({"op": "items", "items": 2, "on_rank": 0}, 30, 10, True)]
        return bare, texts

    bare, texts = compat.run(body)
    assert bare[-1]["streaming"] is True
    assert texts == [b'data: {"i":0,"rank":0}\n\n', b'data: {"i":1,"rank":0}\n\n', b'data: {"rank":0}\n\n']


def test_streaming_timeout_is_the_idle_limit_between_items(compat: LiveRunner) -> None:
    async def steady(runner: DistributedRunner[Any]) -> list[Any]:
        # 5 items 0.1 s apart: 0.5 s in all, longer than the idle limit, each gap shorter
        return [i async for i in runner.stream({"op": "sleep", "items": 5, "delay": 0.1}, streaming_timeout=0.4)]

    async def slow(runner: DistributedRunner[Any]) -> list[Any]:
        return [i async for i in runner.stream({"op": "sleep", "items": 1, "delay": 1.0}, streaming_timeout=0.3)]

    assert len(compat.run(steady)) == 6
    with pytest.raises(RequestTimeout, match="no stream item"):
        compat.run(slow)


def test_streaming_timeout_and_idle_timeout_together_is_an_error(compat: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> None:
        async for _ in runner.stream({}, streaming_timeout=1, idle_timeout=2):
            pass

    with pytest.raises(ValueError, match="streaming_timeout"):
        compat.run(body)


# -- keepalive ----------------------------------------------------------------------------


def test_keepalive_interval_alone_sends_an_empty_payload() -> None:
    async def body() -> Any:
        async with DistributedRunner(ProbeWorker, world_size=2, device="cpu", keepalive_interval=0.2) as runner:
            await asyncio.sleep(1.0)
            # ProbeWorker's default op (echo) served the empty keepalive payloads
            return await runner.invoke({"op": "calls"})

    assert run(body) >= 3


def test_keepalive_payload_without_an_interval_is_an_error() -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        DistributedRunner(ProbeWorker, world_size=1, device="cpu", keepalive_payload={"op": "echo"})


# -- lifecycle ------------------------------------------------------------------------------


def test_is_alive_and_ensure_alive_follow_the_processes() -> None:
    async def body() -> None:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        assert runner.is_alive() is False
        with pytest.raises(RunnerClosed):
            runner.ensure_alive()
        await runner.start()
        try:
            assert runner.is_alive() is True
            runner.ensure_alive()
            with pytest.raises(WorkerDiedError):
                await runner.invoke({"op": "kill", "on_rank": 1})
            assert runner.is_alive() is False
            with pytest.raises(WorkerDiedError) as info:
                runner.ensure_alive()
            assert info.value.rank == 1
            errors = runner.gather_errors()
            assert any(isinstance(e, WorkerDiedError) and e.rank == 1 for e in errors)
        finally:
            await runner.stop()
        assert runner.is_alive() is False

    run(body)


def test_gather_errors_is_empty_while_healthy_and_collects_setup_errors() -> None:
    from gridgen import StartupError

    async def body() -> None:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        assert runner.gather_errors() == []
        with pytest.raises(StartupError):
            await runner.start(fail_on_rank=1)
        errors = runner.gather_errors()
        assert len(errors) == 1 and isinstance(errors[0], StartupError) and errors[0].rank == 1
        await runner.start(fail_on_rank=None)  # a failed start leaves the runner startable
        try:
            assert runner.gather_errors() == []
        finally:
            await runner.stop()

    run(body)


def test_terminate_kills_the_workers_at_once() -> None:
    import psutil

    async def body() -> None:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        pids = [p for p in runner.pids if p is not None]
        running = asyncio.ensure_future(runner.invoke({"op": "hang", "on_rank": 0}))
        await asyncio.sleep(0.3)
        await runner.terminate()
        assert runner.is_alive() is False
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
        with pytest.raises(RequestCancelled):
            await running
        await runner.start()  # and it can start again
        try:
            assert await runner.invoke({"op": "allreduce"}) == {"sum": 3}
        finally:
            await runner.stop()

    run(body)


def test_start_after_stop_starts_the_group_again() -> None:
    async def body() -> None:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        first = list(runner.pids)
        await runner.stop()
        assert runner.state == "stopped"
        await runner.start()
        try:
            assert runner.ready and runner.pids != first
            assert await runner.invoke({"op": "allreduce"}) == {"sum": 3}
        finally:
            await runner.stop()
        async with runner:  # and once more, as a context manager
            assert (await runner.invoke({"op": "echo", "message": "third"}))["echo"] == "third"

    run(body)


# -- fal's constructor keywords ------------------------------------------------------------


def test_fal_constructor_keywords(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> Any:
        caplog.set_level(logging.INFO, logger="gridgen")
        runner = DistributedRunner(
            worker_cls=CompatWorker,
            world_size=2,
            master_addr="127.0.0.1",
            master_port=29500,
            worker_addr="127.0.0.1",
            worker_port=54923,
            timeout=123,
            cwd=tmp_path,
            set_device=True,
            device="cpu",
        )
        assert runner.collective_timeout == 123
        async with runner:
            return await runner.invoke({"op": "info"})

    info = run(body)
    assert info["cwd"] == str(tmp_path)
    assert os.getcwd() != str(tmp_path)  # the host's own directory is untouched
    port_lines = [r for r in caplog.records if "master_port" in r.getMessage()]
    assert len(port_lines) == 1  # one line: the four port keywords are accepted and ignored
    assert all(k in port_lines[0].getMessage() for k in ("master_addr", "worker_addr", "worker_port"))


def test_fal_timeout_and_collective_timeout_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="timeout"):
        DistributedRunner(ProbeWorker, world_size=1, device="cpu", timeout=5, collective_timeout=6)


def test_cwd_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cwd"):
        DistributedRunner(ProbeWorker, world_size=1, device="cpu", cwd=tmp_path / "missing")


# -- pydantic payloads ----------------------------------------------------------------------


class Mode(enum.Enum):
    FAST = "fast"
    GOOD = 2


class Job(BaseModel):
    op: str = "types"  # the CompatWorker op that reports each value's type
    prompt: str
    source: HttpUrl
    mirror: AnyUrl
    mode: Mode
    when: datetime
    day: date
    request_id: uuid.UUID
    output: Path
    sizes: tuple[int, int] = (64, 64)


JOB = Job(
    prompt="a cat",
    source="https://example.com/cat.png",  # type: ignore[arg-type]
    mirror="s3://bucket/cat.png",  # type: ignore[arg-type]
    mode=Mode.GOOD,
    when=datetime(2026, 12, 3, 7, 30, tzinfo=timezone.utc),
    day=date(2026, 12, 3),
    request_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    output=Path("/tmp/out.png"),
)
EXPECTED = {
    "prompt": ["str", "a cat"],
    "source": ["str", "https://example.com/cat.png"],
    "mirror": ["str", "s3://bucket/cat.png"],
    "mode": ["int", 2],
    "when": ["str", "2026-12-03T07:30:00+00:00"],
    "day": ["str", "2026-12-03"],
    "request_id": ["str", "12345678-1234-5678-1234-567812345678"],
    "output": ["str", "/tmp/out.png"],
    "sizes": ["tuple", (64, 64)],
}


def _payload(form: str) -> Any:
    import warnings

    if form == "model":
        return JOB
    if form == "model_dump":
        return JOB.model_dump()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return JOB.dict()  # the seed's request.dict()


@pytest.mark.parametrize("form", ["model", "model_dump", "dict"])
def test_pydantic_payloads_arrive_as_their_json_form(compat: LiveRunner, form: str) -> None:
    payload = _payload(form)

    async def body(runner: DistributedRunner[Any]) -> Any:
        return await runner.invoke(payload)

    assert compat.run(body) == EXPECTED
