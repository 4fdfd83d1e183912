"""Every repository path the README, ARCHITECTURE.md, the docs and the examples name exists,
so a moved test or example cannot leave them pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    ROOT / "ARCHITECTURE.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted(p for p in (ROOT / "examples").iterdir() if p.is_file()),
]
# A path from the repository root: one of its top-level folders, then names; not part of a
# longer path (``/work/docs/x``), a home path or a URL.
REPO_PATH = re.compile(r"(?<![\w./~:-])((?:src|tests|examples|docs|bench|tools|\.ci)/[\w./-]*[\w/])")
LINK = re.compile(r"\]\(([^)\s]+)\)")


# What a command is told to write (``--out bench/results/x.json``) need not exist yet.
OUTPUT_FLAG = re.compile(r"(--out|--output|-o|--report|--save-dir|>)[ =]$")


def named_paths(page: Path) -> list[str]:
    text = page.read_text()
    paths = [
        m.group(1) for m in REPO_PATH.finditer(text) if not OUTPUT_FLAG.search(text[max(0, m.start() - 12) : m.start()])
    ]
    if page.suffix == ".md":  # relative links: from the page's own folder
        for target in LINK.findall(text):
            target = target.split("#")[0]
            if target and not re.match(r"[a-z]+:", target):
                paths.append(str((page.parent / target).resolve().relative_to(ROOT)))
    return paths


def test_the_pages_name_repository_paths() -> None:
    assert "tests/examples/test_examples.py" in named_paths(ROOT / "README.md")
    assert "examples/make_grid.py" in named_paths(ROOT / "docs" / "quickstart.md")
    assert "docs/ray.md" in named_paths(ROOT / "README.md")  # a link
    assert "bench/results/lora-h100.json" not in named_paths(ROOT / "docs" / "lora.md")  # --out's file


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_path_exists(page: Path) -> None:
    missing = sorted({p for p in named_paths(page) if not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_no_page_contradicts_where_a_worker_class_can_live() -> None:
    # docs/concepts.md: a class from a notebook cell or the script run goes by value, and
    # the workers do not run the script again. Two pages said otherwise.
    for page in PAGES:
        text = " ".join(page.read_text().split())
        assert not re.search(r"notebook cell[^.]{0,40} cannot be used", text), page
        assert not re.search(r"__main__.{0,20}# required", text), page
