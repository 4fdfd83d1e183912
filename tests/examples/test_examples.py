"""Every example in examples/, and the code the docs tell readers to save and run, runs.

Each one runs as a subprocess on two CPU ranks with the built-in tiny model at tiny
sizes, the way a reader would run it, and the test checks what it prints and writes.
The FastAPI example is served with uvicorn on a free loopback port and driven by the
streaming client example.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
RUN_TIMEOUT = 100.0  # seconds; on an idle 2-core machine each example takes 5 to 15


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The examples' environment: offline, with the tiny model built once in a private cache."""
    cache = tmp_path_factory.mktemp("gridgen-cache")
    environ = dict(os.environ)
    environ.update(
        GRIDGEN_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), environ.get("PYTHONPATH")) if p),
    )
    # Build the tiny model here, once, rather than in two racing ranks of the first example.
    subprocess.run(
        [sys.executable, "-c", "from gridgen.sdxl import ensure_tiny_sdxl; ensure_tiny_sdxl()"],
        env=environ,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    return environ


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python *args``; fail with its output if it fails."""
    try:
        proc = subprocess.run(
            [sys.executable, *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{args} ran past {RUN_TIMEOUT}s\n--- stdout\n{exc.stdout}\n--- stderr\n{exc.stderr}"
        )
    assert proc.returncode == 0, (
        f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


# -- examples/ --------------------------------------------------------------------------


def test_every_example_is_tested() -> None:
    tested = {
        "make_grid.py",
        "custom_worker.py",
        "notebook_sync.py",
        "seed_app_fastapi.py",
        "stream_client.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


NOISE = ("Loading pipeline components", "Loading weights", "accelerate", "[transformers]", "it/s]")


def test_examples_are_verbose_on_request(env: dict[str, str], tmp_path: Path) -> None:
    # Quiet by default: test_notebook_sync checks the same example's default run.
    loud = run([str(EXAMPLES / "notebook_sync.py"), "-o", "sync.png"], {**env, "GRIDGEN_VERBOSE": "1"}, tmp_path)
    assert "Loading pipeline components" in loud.stderr


def test_make_grid(env: dict[str, str], tmp_path: Path) -> None:
    proc = run(
        [str(EXAMPLES / "make_grid.py"), "a lighthouse at dawn", "-o", "grid.png"], env, tmp_path
    )
    assert "saved grid.png: 128x128, seeds [0, 1, 2, 3]" in proc.stdout
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.size == (128, 128)  # 4 images of 64x64, 2 x 2


def test_custom_worker(env: dict[str, str], tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "custom_worker.py")], env, tmp_path).stdout
    match = re.search(r"invoke: pi ~ (\d\.\d+) from 100000 samples on 2 ranks", out)
    assert match and abs(float(match.group(1)) - 3.1416) < 0.05, out
    for i in range(1, 5):
        assert f"stream: chunk {i}/4: pi ~ " in out
    assert "stream: done, pi ~ " in out
    assert "cancel: stopped after chunk 3 of 500" in out
    assert re.search(r"error: rank [01] raised ValueError: samples must be at least", out), out
    assert "still healthy: pi ~ " in out


def test_notebook_sync(env: dict[str, str], tmp_path: Path) -> None:
    quiet = run([str(EXAMPLES / "notebook_sync.py"), "-o", "sync.png"], env, tmp_path)
    for text in NOISE:  # the examples are quiet by default
        assert text not in quiet.stderr and text not in quiet.stdout, text
    out = quiet.stdout
    assert "invoke: 2 images, seeds [1, 2]" in out
    assert "stream: step 2/4, preview (32, 32)" in out and "stream: step 4/4" in out
    assert "stream: done in " in out
    with Image.open(tmp_path / "sync.png") as grid:
        assert grid.size == (128, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def seed_app(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """examples/seed_app_fastapi.py served by uvicorn on 127.0.0.1; yields its base URL."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    args = ["--model", "tiny", "--workers", "2", "--device", "cpu", "--size", "64", "--steps", "6"]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "seed_app_fastapi.py"), *args, "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # The app has no /ready: uvicorn accepts connections once the lifespan (start and
        # warm-up) is done, so the first answer means ready.
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (
                "the app did not start\n" + (tmp_path / "server.log").read_text()
            )
            time.sleep(0.25)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down: lifespan end -> runner.stop()
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            log.close()
        assert code == 0, (tmp_path / "server.log").read_text()


def test_seed_app_with_stream_client(seed_app: str, env: dict[str, str], tmp_path: Path) -> None:
    response = httpx.post(f"{seed_app}/", json={"prompt": "a cat"}, timeout=RUN_TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["image"].startswith("data:image/png;base64,")

    out = run(
        [
            str(EXAMPLES / "stream_client.py"),
            "a lighthouse",
            "--url",
            seed_app,
            "--out",
            "previews",
        ],
        env,
        tmp_path,
    ).stdout
    previews = sorted((tmp_path / "previews").glob("preview-*"))
    assert len(previews) == 2, out  # the seed's callback: step 0 and step 5 of 6
    # streamed images are JPEG unless add_streaming_result(image_format=...) says otherwise
    assert [p.suffix for p in previews] == [".jpg", ".jpg"]
    assert "result -> " in out
    with Image.open(tmp_path / "previews" / "result.png") as grid:
        assert grid.size == (64, 128)  # the seed's grid: floor(sqrt(2)) = 1 column of 64x64
    log = (tmp_path / "server.log").read_text()
    assert "it/s]" not in log and "s/it]" not in log, log  # no diffusers progress bar per request


# -- the docs' own code: a reader saves these blocks and runs them -------------------------


def code_blocks(page: str) -> dict[str, str]:
    """The ```python title="NAME" blocks of a docs page, by title."""
    text = (DOCS / page).read_text()
    return dict(re.findall(r'```python title="([^"]+)"\n(.*?)\n```', text, flags=re.S))


def save_blocks(page: str, folder: Path) -> None:
    for name, code in code_blocks(page).items():
        (folder / name).write_text(code + "\n")


def test_custom_worker_page(env: dict[str, str], tmp_path: Path) -> None:
    save_blocks("custom-worker.md", tmp_path)
    assert {"echo.py", "test_echo.py", "app.py"} <= {p.name for p in tmp_path.iterdir()}
    lines = run(["echo.py"], env, tmp_path).stdout.splitlines()
    assert lines[0] == "{'echo': 'hello, world', 'world_size': 2}"
    assert sorted(lines[1:3]) == ["{'rank': 0, 'got': 'again'}", "{'rank': 1, 'got': 'again'}"]
    assert lines[3] == "{'echo': 'hello, again', 'world_size': 2}"
    out = run(
        ["-m", "pytest", "test_echo.py", "-q", "-p", "no:cacheprovider"], env, tmp_path
    ).stdout
    assert "2 passed" in out


def test_tutorial_page(env: dict[str, str], tmp_path: Path) -> None:
    save_blocks("tutorial.md", tmp_path)
    assert {"parallel_sdxl.py", "generate.py", "cancel.py", "app.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    out = run(["generate.py"], env, tmp_path).stdout.splitlines()
    assert out == [
        "saved grid.png (128, 64) seeds [0, 1]",
        "preview at step 2/4: (128, 64)",
        "preview at step 4/4: (128, 64)",
        "final: (128, 64)",
    ]
    out = run(["cancel.py"], env, tmp_path).stdout
    assert re.fullmatch(r"cancelled, then served the next request after \d+\.\ds\n", out), out


def test_readme_worker(env: dict[str, str], tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Your own worker.*?```python\n(.*?)```", readme, flags=re.S)
    assert code, "README.md lost its worker example"
    (tmp_path / "echo_readme.py").write_text(code.group(1))
    lines = run(["echo_readme.py"], env, tmp_path).stdout.splitlines()
    assert lines[0] == "{'echo': 'hello, world', 'world_size': 2}"
    assert lines[-1] == "{'echo': 'hello, again', 'world_size': 2}"


def test_quick_start_is_the_same_everywhere_and_parses() -> None:
    """README and docs/quickstart.md show the same two commands, and the CLI accepts them."""
    import shlex

    from gridgen.cli import build_parser

    def quick_start(path: Path) -> str:
        text = path.read_text()
        block = re.search(r"```bash\n(python3 -m venv .*?)```", text, flags=re.S)
        assert block, f"{path.name} lost its quick start"
        return block.group(1)

    commands = quick_start(ROOT / "README.md")
    assert commands == quick_start(DOCS / "quickstart.md")
    first, second = commands.strip().splitlines()
    assert second == '. .venv/bin/activate && pip install -e ".[test]" && python -m pytest'
    generate = shlex.split(first.split(" && ")[-1])
    assert generate[0] == "gridgen"
    args = build_parser().parse_args(generate[1:])
    assert (args.command, args.model, args.workers, args.device, args.output) == (
        "generate",
        "tiny",
        2,
        "cpu",
        "grid.png",
    )
    if (ROOT / ".git").exists() and shutil.which("git"):  # a checkout: what it writes is ignored
        for written in (args.output, "sync_grid.png", "previews/preview-0.jpg"):
            ignored = subprocess.run(["git", "check-ignore", "-q", written], cwd=ROOT)
            assert ignored.returncode == 0, f"{written} would show up in git status"


def test_stream_client_without_a_server_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "stream_client.py"), "a cat", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"no server at http://127.0.0.1:{port}: start one first (gridgen serve --model tiny --device cpu) or pass --url"
    ]
