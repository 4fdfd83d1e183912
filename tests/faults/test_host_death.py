"""When the host dies, even by SIGKILL, every worker exits and the private directory goes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

HOST = textwrap.dedent(
    """
    import asyncio, json, sys
    from gridgen import DistributedRunner
    from gridgen.testing import ProbeWorker

    async def main():
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        print(json.dumps({"pids": runner.pids, "dir": runner.control_dir}), flush=True)
        await asyncio.sleep(3600)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_workers_exit_when_the_host_is_killed(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(str(tmp_path), "host.py")
    with open(script, "w") as f:
        f.write(HOST)
    host = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, text=True)
    try:
        line = host.stdout.readline() if host.stdout else ""
        info = json.loads(line)
        workers = [psutil.Process(p) for p in info["pids"]]
        assert all(w.is_running() for w in workers)
        host.send_signal(signal.SIGKILL)
        host.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived their host"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.path.exists(info["dir"]):
            time.sleep(0.1)
        assert not os.path.exists(info["dir"]), "the private directory was left behind"
    finally:
        if host.poll() is None:
            host.kill()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


FORGETFUL_HOST = textwrap.dedent(
    """
    import asyncio, json
    from gridgen import DistributedRunner
    from gridgen.testing import ProbeWorker

    async def main():
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        print(json.dumps({"pids": runner.pids, "dir": runner.control_dir}), flush=True)
        raise RuntimeError("a bug in the host: stop() is never called")

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_a_host_that_never_stops_its_runner_still_exits_cleanly(tmp_path: os.PathLike[str]) -> None:
    # multiprocessing's own exit hook joins child processes; gridgen's hook must run first
    # and end the workers, or the interpreter would wait for them forever.
    script = os.path.join(str(tmp_path), "forgetful.py")
    with open(script, "w") as f:
        f.write(FORGETFUL_HOST)
    started = time.monotonic()
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert "a bug in the host" in done.stderr
    info = json.loads(done.stdout.splitlines()[0])
    workers = [p for p in info["pids"]]
    assert not any(_alive(psutil.Process(p)) for p in workers if psutil.pid_exists(p))
    assert not os.path.exists(info["dir"])
