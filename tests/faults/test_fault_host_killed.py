"""The host is SIGKILLed mid-work: every worker exits within 10 s and no file is left.

``test_host_death.py`` covers an idle host. Here the host dies while its ranks are busy:
one rank hanging in user code with the other waiting in a collective, and one rank
streaming large items faster than anyone reads them (its outgoing queue full, the case
where a blocking send used to keep the rank alive forever). The host runs with a private
``TMPDIR`` so "nothing left behind" is checked on the whole directory, not on a guess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

HOST = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile
    from typing import Any
    from gridgen import DistributedRunner, DistributedWorker
    from gridgen.testing import ProbeWorker

    class Flood(DistributedWorker):
        def __call__(self, streaming: bool = False, **payload: Any) -> Any:
            while True:  # large items, as fast as rank 0 can make them
                if self.rank == 0:
                    self.add_streaming_result({"data": bytes(1 << 20)})
                else:
                    self.should_stop()

    async def main(scenario):
        worker = Flood if scenario == "flood" else ProbeWorker
        runner = DistributedRunner(worker, world_size=2, device="cpu")
        await runner.start()
        if scenario == "flood":
            runner.submit({}, streaming=True)
        else:
            runner.submit({"op": "hang", "on_rank": 0})  # rank 1 waits in an all-reduce
            runner.submit({"op": "echo"})  # and one queued behind it
        await asyncio.sleep(1.0)  # let the ranks get busy
        print(json.dumps({"pids": runner.pids, "dir": runner.control_dir, "tmp": tempfile.gettempdir()}), flush=True)
        await asyncio.sleep(3600)

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1]))
    """
)


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("scenario", ["hang-and-collective", "flood"])
def test_busy_workers_exit_when_the_host_is_killed(tmp_path: Path, scenario: str) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    script = tmp_path / "host.py"
    script.write_text(HOST)
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    host = subprocess.Popen([sys.executable, str(script), scenario], stdout=subprocess.PIPE, text=True, env=env)
    descendants: list[psutil.Process] = []
    try:
        assert host.stdout is not None
        info = json.loads(host.stdout.readline())
        assert info["tmp"] == str(private_tmp)
        assert Path(info["dir"]).parent == private_tmp
        assert os.path.exists(os.path.join(info["dir"], "control"))
        # every process the host started: the ranks and multiprocessing's helpers
        descendants = psutil.Process(host.pid).children(recursive=True)
        assert {p.pid for p in descendants} >= set(info["pids"])

        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 10 and any(_alive(p) for p in descendants):
            time.sleep(0.05)
        survivors = [p.pid for p in descendants if _alive(p)]
        exited_after = time.monotonic() - killed_at
        assert not survivors, f"processes outlived their host by 10 s: {survivors}"
        assert exited_after < 10
        # no socket file, store file or directory: the whole private TMPDIR is empty
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(private_tmp.iterdir()):
            time.sleep(0.05)
        assert list(private_tmp.iterdir()) == []
    finally:
        if host.poll() is None:
            host.kill()
        for process in descendants:
            if _alive(process):
                process.kill()
