"""Workers leave no named semaphores behind: a worker's tqdm bar (tqdm's default lock is a
multiprocessing semaphore) used to be reported as leaked by the host's resource tracker
at exit, as on every Ctrl-C of examples/seed_app_fastapi.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, os
from gridgen import DistributedRunner, DistributedWorker

class Bars(DistributedWorker):
    def __call__(self, streaming=False):
        import tqdm
        for _ in tqdm.tqdm(range(3), disable=False):
            pass
        return {"pid": os.getpid()}

async def main():
    async with DistributedRunner(Bars, world_size=2, device="cpu") as runner:
        await runner.invoke({})

asyncio.run(main())
"""


def test_a_workers_tqdm_lock_is_not_reported_as_leaked(tmp_path: Path) -> None:
    script = tmp_path / "bars.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3/3" in result.stderr  # the bars ran, in both workers
    assert "leaked semaphore" not in result.stderr, result.stderr
