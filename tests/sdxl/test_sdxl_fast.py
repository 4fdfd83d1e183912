"""setup(optimize=...): the graphed UNet path gives the eager path's images; deferred encoding."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from gridgen.diffusion.fast import GraphedTextEncoder, GraphedUNet, optimize_pipeline
from gridgen.images import EncodedImage
from gridgen.sdxl import SDXLWorker

REQUEST: dict[str, Any] = {
    "prompt": "a lighthouse", "num_images": 2, "width": 64, "height": 64,
    "num_inference_steps": 3, "seed": 7, "output": "images", "image_format": "png",
}


def _pixels(result: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(image.open().convert("RGB")) for image in result["images"]]


def test_graphed_unet_path_matches_eager(tiny_cache: str) -> None:
    eager = SDXLWorker()
    eager.setup(model="tiny", optimize="none")
    fast = SDXLWorker()
    fast.setup(model="tiny", optimize="graphs")
    assert isinstance(fast.graphed_unet, GraphedUNet)
    assert eager.graphed_unet is None
    expected, got = eager(**REQUEST), fast(**REQUEST)
    for a, b in zip(_pixels(expected), _pixels(got), strict=True):
        np.testing.assert_array_equal(a, b)
    # the static-buffer path ran (one entry per CFG batch shape), without eager fallbacks
    assert len(fast.graphed_unet.entries) == 1 and fast.graphed_unet.fallbacks == 0
    fast.graphed_unet.uninstall()  # back to the eager forward, graphs dropped
    assert "forward" not in vars(fast.pipeline.unet) and not fast.graphed_unet.entries
    for a, b in zip(_pixels(expected), _pixels(fast(**REQUEST)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not fast.graphed_unet.entries  # nothing went through the graphs


def test_auto_is_eager_on_cpu(tiny_cache: str) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny")
    assert worker.graphed_unet is None


def test_bad_mode_is_rejected(tiny_cache: str) -> None:
    with pytest.raises(ValueError, match="optimize must be"):
        optimize_pipeline(object(), "fastest", "cpu")  # type: ignore[arg-type]


def test_deferred_encoding_returns_a_future(tiny_cache: str) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", defer_encoding=True, warmup=(1,), warmup_size=(64, 64))
    result = worker(**REQUEST)
    assert isinstance(result, concurrent.futures.Future)
    done = result.result(timeout=60)
    assert done["num_images"] == 2 and len(done["images"]) == 2
    assert done["timings"]["encode"] > 0  # the encoding ran, in the future's thread
    for image in done["images"]:  # and produced real image files of the requested size
        assert isinstance(image, EncodedImage)
        assert image.open().size == (done["width"], done["height"])
    worker.teardown()


def test_graphed_text_encoders_give_eager_embeddings(tiny_cache: str) -> None:
    import torch

    worker = SDXLWorker()
    worker.setup(model="tiny", optimize="none")
    pipe = worker.pipeline

    def embeddings() -> tuple[Any, ...]:
        with torch.no_grad():
            return tuple(pipe.encode_prompt(prompt="a cat", device="cpu", negative_prompt="a dog"))

    expected = embeddings()
    wrappers = [GraphedTextEncoder(pipe.text_encoder).install(), GraphedTextEncoder(pipe.text_encoder_2).install()]
    got, again = embeddings(), embeddings()
    for a, b, c in zip(expected, got, again, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    # one static-buffer entry per encoder (prompt and negative share the token shape), no fallback
    assert [len(w.entries) for w in wrappers] == [1, 1]
    assert [w.fallbacks for w in wrappers] == [0, 0]
    ids = torch.zeros((1, 77), dtype=torch.long)
    pipe.text_encoder(ids)  # a call the pipeline never makes: eager
    assert wrappers[0].fallbacks == 1


def test_bad_compile_regions_are_rejected(tiny_cache: str) -> None:
    with pytest.raises(ValueError, match="compile_regions must be one of"):
        optimize_pipeline(object(), "graphs", "cpu", regions="everything")  # type: ignore[arg-type]


# In a module of its own: inductor's cache key covers where the compiled code comes from
# (file and line), as it would be for the same gridgen/diffusers on two machines.
_SMALL_MODULE = """
import torch
from torch._dynamo.utils import counters
def f(x):
    return (torch.sin(x) * 3 + torch.cos(x)).sum(dim=0)
def run():
    torch.compile(f, fullgraph=True)(torch.arange(64.0).reshape(8, 8))
    print("hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"])
"""


def _python(code: str, tmp_path: Any, inductor_dir: str, **env: str) -> str:
    import os
    import subprocess
    import sys

    (tmp_path / "small_compiled.py").write_text(_SMALL_MODULE)
    environ = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / inductor_dir)}
    environ["PYTHONPATH"] = os.pathsep.join([str(tmp_path), environ.get("PYTHONPATH", "")])
    environ.pop("GRIDGEN_COMPILE_CACHE", None)
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)  # three fresh processes import diffusers and compile on the CPU
def test_compile_cache_made_on_one_machine_is_used_on_another(tiny_cache: str, tmp_path: Any) -> None:
    """Make (a worker writes the file), ship (only the file), point (the env var): cache hits."""
    cache = tmp_path / "ship" / "compiled.bin"
    setup = f"SDXLWorker().setup(model='tiny', optimize='none', compile_cache={str(cache)!r})\n"
    make = (
        "import os\nfrom gridgen.sdxl import SDXLWorker\n" + setup
        + f"print('written before compiling:', os.path.exists({str(cache)!r}))\n"
        "import small_compiled\nsmall_compiled.run()\n" + setup
    )
    made = _python(make, tmp_path, "machine-a")
    assert "written before compiling: False" in made  # nothing compiled: no empty file
    assert "misses 1" in made
    assert cache.is_file() and cache.stat().st_size > 0
    point = (
        "from gridgen.sdxl import SDXLWorker\n"
        "SDXLWorker().setup(model='tiny', optimize='none')\n"
        "import small_compiled\nsmall_compiled.run()\n"
    )
    # a fresh machine: empty inductor cache, the shipped file named by the env var
    assert "hits 1 misses 0" in _python(point, tmp_path, "machine-b", GRIDGEN_COMPILE_CACHE=str(cache))
    # the control: the same fresh machine without the file compiles again
    assert "hits 0 misses 1" in _python(point, tmp_path, "machine-c")
