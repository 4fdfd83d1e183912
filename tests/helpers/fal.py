"""Helpers for the fal-compatibility tests (a plain module: conftest names collide between folders)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
FAL_IMPORT = "from gridgen.fal import DistributedRunner, DistributedWorker"
PLAIN_IMPORT = "from gridgen import DistributedRunner, DistributedWorker"


def plain_variant(module_name: str, directory: Path) -> ModuleType:
    """``tests/helpers/<module_name>.py`` with its import line changed from gridgen.fal to gridgen.

    The copy is written to ``directory`` as ``<module_name>_plain.py`` and imported; the
    directory stays on ``sys.path`` so spawned workers (which get the parent's path)
    import the worker classes from the same file.
    """
    source = (HERE / f"{module_name}.py").read_text()
    assert source.count(FAL_IMPORT) == 1, f"{module_name}.py must import from gridgen.fal exactly once"
    (directory / f"{module_name}_plain.py").write_text(source.replace(FAL_IMPORT, PLAIN_IMPORT))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    return importlib.import_module(f"{module_name}_plain")


def read_sse(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """POST ``body`` and read the whole ``text/event-stream`` body: the response and each
    event's parsed ``data:`` JSON, in order. Fails on anything that is not a ``data:`` line
    or a blank line, so a truncated or malformed body is caught."""
    events: list[Any] = []
    with client.stream("POST", path, json=body) as response:
        text = "".join(response.iter_text())
    assert response.headers["content-type"].startswith("text/event-stream"), response.headers
    assert text.endswith("\n\n"), f"the body does not end with a complete event: {text[-200:]!r}"
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, f"not one data line: {block[:200]!r}"
        events.append(json.loads(block.removeprefix("data: ")))
    return response, events
