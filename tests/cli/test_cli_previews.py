"""``serve --preview`` and ``--preview-model``: which previews the playground and /stream get,
checked before any worker starts, and a FLUX.1 service streaming TAESD previews."""

from __future__ import annotations

import argparse

import httpx
import pytest

from gridgen._preflight import UsageError, worker_options
from gridgen.cli import build_parser
from gridgen.diffusion.builders import ensure_tiny_sdxl, ensure_tiny_taesd
from gridgen.diffusion.families import FLUX_DEV, SD3, SDXL

from helpers.cli import run_cli
from helpers.serve import gridgen_serve
from helpers.server import decode_data_url, stream_events


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_the_preview_options_become_setup_arguments(family_cache: str) -> None:
    taef1 = str(ensure_tiny_taesd(16))
    assert worker_options(_args("--preview", "taesd", "--preview-model", taef1), FLUX_DEV) == {
        "preview": "taesd", "preview_model": taef1,
    }
    assert worker_options(_args("--preview-model", taef1), SD3) == {"preview_model": taef1}  # auto: taesd
    assert worker_options(_args("--preview", "none"), SDXL) == {"preview": None}  # progress only
    assert worker_options(_args("--preview", "linear"), SDXL) == {"preview": "linear"}
    assert worker_options(_args(), FLUX_DEV) == {}  # the worker's default: auto


def test_preview_options_that_cannot_work_are_usage_errors(family_cache: str) -> None:
    with pytest.raises(UsageError, match="--preview-model: only used with --preview taesd or auto, not --preview linear"):
        worker_options(_args("--preview", "linear", "--preview-model", "madebyollin/taef1"), FLUX_DEV)
    with pytest.raises(UsageError, match=r"--preview-model: no such folder: \./no-such-taesd"):
        worker_options(_args("--preview-model", "./no-such-taesd"), FLUX_DEV)
    sdxl_taesd = str(ensure_tiny_sdxl() / "taesd")
    with pytest.raises(UsageError, match=r"--preview-model: '.*' decodes 4-channel latents; FLUX.1-dev's have 16 "
                       r"\(its TAESD: 'madebyollin/taef1'\)"):
        worker_options(_args("--preview", "taesd", "--preview-model", sdxl_taesd), FLUX_DEV)


def test_a_bad_preview_exits_2_before_any_worker_starts() -> None:
    result = run_cli("serve", "--model", "tiny-flux", "--preview", "fancy")
    assert result.returncode == 2 and "--preview: invalid choice: 'fancy'" in result.stderr
    result = run_cli("serve", "--model", "tiny-flux", "--preview", "none", "--preview-model", "madebyollin/taef1")
    assert result.returncode == 2 and "--preview-model: only used with --preview taesd or auto" in result.stderr
    assert "starting" not in result.stderr


def test_a_flux_service_streams_taesd_previews_at_image_size(family_cache: str) -> None:
    request = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2, "num_images": 2,
               "preview_every": 1}
    with gridgen_serve("--model", "tiny-flux", "--workers", "1", "--preview", "taesd") as url, \
            httpx.Client(base_url=url, timeout=120) as client:
        events = stream_events(client, request)
    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == [1, 2]
    # two 64x64 images decoded at full size (linear previews of them would be 32x16 in all)
    assert all(decode_data_url(p["preview_image"], "image/jpeg").size == (128, 64) for p in progress)
    assert events[-1][0] == "result"
