"""The documentation site builds with Zensical from mkdocs.yml, strictly, and renders what the
pages pull in: the API reference from the docstrings and the examples included as snippets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_zensical_builds_the_site_with_the_api_reference(tmp_path: Path) -> None:
    pytest.importorskip("zensical", reason="the docs extra is not installed (CI installs it)")
    # Zensical wants docs_dir under the config's folder and writes site/ next to it: build a
    # copy of what the site reads, so the test leaves the checkout alone.
    project = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("docs", "src", "examples", "bench", "tools"):
        shutil.copytree(ROOT / folder, project / folder, ignore=ignore)
    for page in ("mkdocs.yml", "ARCHITECTURE.md"):
        shutil.copy(ROOT / page, project / page)
    build = subprocess.run(
        [sys.executable, "-m", "zensical", "build", "--strict", "--clean"],
        capture_output=True, text=True, timeout=100, cwd=project,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    site = project / "site"
    api = (site / "api" / "index.html").read_text()
    assert 'id="gridgen.DistributedRunner"' in api and "Runs <code>worker_cls</code> in one process" in api
    assert 'id="gridgen.server.create_app"' in api
    assert ":class:" not in api and ":meth:" not in api  # Sphinx roles shown as code (tools/)
    quickstart = (site / "quickstart" / "index.html").read_text()
    assert "SDXLWorker" in quickstart  # examples/make_grid.py, included as a snippet
    assert (site / "search.json").stat().st_size > 10_000
