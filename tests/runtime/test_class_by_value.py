"""Worker classes where users define them: an unguarded script, ``python -``, and a clear
error where a class truly cannot travel (the notebook case is tests/test_notebook.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio{extra_import}
from gridgen import DistributedRunner, DistributedWorker
{extra_global}

class Echo(DistributedWorker):
    def setup(self, suffix="?"):
        self.suffix = suffix

    def __call__(self, streaming=False, text=""):
        {body}
        return {{"text": text.upper() + self.suffix, "ranks": self.world_size}}

async def main():
    async with DistributedRunner(Echo, world_size=2, device="cpu", setup_kwargs={{"suffix": "!"}}) as runner:
        print("RESULT", await runner.invoke({{"text": "hi"}}))
        print("RESULT", await runner.invoke({{"text": "again"}}))

asyncio.run(main())  # no `if __name__ == "__main__":` guard
"""


def _python(args: list[str], stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_an_unguarded_script_runs_once_with_its_own_worker_class(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT.format(extra_import="", extra_global="", body="pass"))
    result = _python([str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The workers did not run the script again: one runner, two results, no traceback.
    assert result.stdout.splitlines() == [
        "RESULT {'text': 'HI!', 'ranks': 2}",
        "RESULT {'text': 'AGAIN!', 'ranks': 2}",
    ]
    assert "Traceback" not in result.stderr and "bootstrapping phase" not in result.stderr


def test_a_worker_class_typed_into_python_stdin_runs(tmp_path: Path) -> None:
    result = _python(["-"], stdin=SCRIPT.format(extra_import="", extra_global="", body="pass"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "RESULT {'text': 'HI!', 'ranks': 2}"
    assert "Traceback" not in result.stderr


def test_a_class_that_cannot_travel_is_one_startup_error_saying_what_to_do(tmp_path: Path) -> None:
    source = SCRIPT.format(
        extra_import="\nimport threading", extra_global="LOCK = threading.Lock()", body="with LOCK: pass"
    ).replace("asyncio.run(main())", "try:\n    asyncio.run(main())\nexcept Exception as e:\n    print(type(e).__name__, e)")
    script = tmp_path / "locked.py"
    script.write_text(source)
    result = _python([str(script)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("StartupError could not start the worker processes: ")
    assert "worker class Echo" in line and "cannot pickle '_thread.lock' object" in line
    assert "Move the class into a module file" in line and "setup()" in line
    assert "Traceback" not in result.stderr
