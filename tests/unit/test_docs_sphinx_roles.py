"""The docs build's griffe extension (tools/griffe_sphinx_roles.py): Sphinx roles become code spans."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import griffe
import pytest


def _extension() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "tools" / "griffe_sphinx_roles.py"
    spec = importlib.util.spec_from_file_location("griffe_sphinx_roles", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("role", "shown"),
    [
        (":class:`~gridgen.errors.QueueFull`", "`QueueFull`"),
        (":meth:`gridgen.DistributedRunner.start`", "`gridgen.DistributedRunner.start`"),
        (":meth:`Batch.cancelled <gridgen.Batch.cancelled>`", "`Batch.cancelled`"),
        (":func:`.save_compile_cache`", "`save_compile_cache`"),
        (":data:`~gridgen.diffusion.fast.CompileRegions`", "`CompileRegions`"),
    ],
)
def test_each_role_shows_what_sphinx_would(role: str, shown: str) -> None:
    assert _extension().plain(f"Raises {role} at once.") == f"Raises {shown} at once."


def test_text_without_roles_is_unchanged() -> None:
    text = "Plain ``code``, a `link`_ and :not-a-role: stay as they are."
    assert _extension().plain(text) == text


def test_the_extension_rewrites_loaded_docstrings() -> None:
    code = 'def f():\n    """Raises :class:`~gridgen.QueueFull`."""\n'
    extensions = griffe.load_extensions(_extension().SphinxRoles())
    module = griffe.temporary_visited_module(code, extensions=extensions)
    with module as loaded:
        assert loaded["f"].docstring.value == "Raises `QueueFull`."
