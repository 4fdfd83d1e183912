"""The public API is exactly ``__all__``, and every public name says what it is.

The API reference (docs/api.md) is generated from these docstrings, so a public name
without one is a hole in the docs.
"""

from __future__ import annotations

import ast
import inspect
import types
from typing import Any

import pytest

import gridgen
import gridgen.sdxl

# Public names that still lack a docstring. Each entry must really be undocumented (a
# test below fails once it gets one, so the list only shrinks); new names may not join.
UNDOCUMENTED: set[str] = {
    "gridgen.sdxl.DEFAULT_MODEL",
    "gridgen.sdxl.RANDOM_MODEL",
    "gridgen.sdxl.TINY_MODEL",
}

# Classes whose public methods and properties must be documented too, by public path.
CLASSES_WITH_DOCUMENTED_METHODS: dict[str, type] = {
    "gridgen.Batch": gridgen.Batch,
    "gridgen.BatchItem": gridgen.BatchItem,
    "gridgen.DistributedRunner": gridgen.DistributedRunner,
    "gridgen.DistributedWorker": gridgen.DistributedWorker,
    "gridgen.RequestHandle": gridgen.RequestHandle,
    "gridgen.SyncRunner": gridgen.SyncRunner,
    "gridgen.sdxl.SDXLWorker": gridgen.sdxl.SDXLWorker,
}


def test_all_names_exist() -> None:
    for module in (gridgen, gridgen.sdxl):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names what the module lacks: {missing}"
        assert len(set(module.__all__)) == len(module.__all__), (
            f"{module.__name__}.__all__ has duplicates"
        )


@pytest.mark.parametrize("module", [gridgen, gridgen.sdxl], ids=lambda m: m.__name__)
def test_every_public_attribute_is_in_all(module: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(module.__all__) == set(), (
        "public but not in __all__ (export it or rename it with _)"
    )


def test_public_names_import_from_the_top() -> None:
    namespace: dict[str, Any] = {}
    exec("from gridgen import *", namespace)
    assert {n for n in namespace if n != "__builtins__"} == set(gridgen.__all__)


# -- docstrings ---------------------------------------------------------------------------


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring (not one inherited from a base class or from ``str``)."""
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
    elif isinstance(obj, (staticmethod, classmethod)):
        doc = obj.__func__.__doc__
    elif isinstance(obj, (property, types.FunctionType, types.BuiltinFunctionType)):
        doc = obj.__doc__
    else:
        return None
    return doc if doc and doc.strip() else None


def _attribute_doc(module: types.ModuleType, name: str) -> str | None:
    """The docstring under a module-level assignment (``NAME = ...`` then ``\"\"\"doc\"\"\"``)."""
    value = getattr(module, name)
    source_module = inspect.getmodule(value) if not isinstance(value, (str, int, float)) else None
    candidates = [source_module] if source_module else []
    # Constants carry no module: look in the module and in the modules it re-exports from.
    candidates += [module] + [m for m in vars(module).values() if isinstance(m, types.ModuleType)]
    for candidate in candidates:
        try:
            tree = ast.parse(inspect.getsource(candidate))
        except (OSError, TypeError):
            continue
        body = tree.body
        for i, node in enumerate(body[:-1]):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                following = body[i + 1]
                if (
                    isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)
                ):
                    return following.value.value
    return None


def _public_items() -> dict[str, str | None]:
    """Every checked public name, with its docstring (None when it has none)."""
    docs: dict[str, str | None] = {}
    for module in (gridgen, gridgen.sdxl):
        for name in module.__all__:
            if name == "__version__":
                continue
            value = getattr(module, name)
            doc = _own_doc(value)
            if doc is None and not isinstance(value, (type, types.FunctionType)):
                doc = _attribute_doc(module, name)
            docs[f"{module.__name__}.{name}"] = doc
    for path, cls in CLASSES_WITH_DOCUMENTED_METHODS.items():
        for name, member in vars(cls).items():
            if name.startswith("_") and name != "__call__":
                continue
            if isinstance(member, (types.FunctionType, property, staticmethod, classmethod)):
                docs[f"{path}.{name}"] = _own_doc(member)
    return docs


def test_public_names_have_docstrings() -> None:
    missing = sorted(
        name for name, doc in _public_items().items() if doc is None and name not in UNDOCUMENTED
    )
    assert not missing, f"public names without a docstring: {missing}"


def test_the_undocumented_list_only_shrinks() -> None:
    items = _public_items()
    stale = sorted(name for name in UNDOCUMENTED if items.get(name, "gone") is not None)
    assert not stale, f"documented (or gone) now: remove them from UNDOCUMENTED: {stale}"


def test_the_errors_form_one_tree() -> None:
    errors = [
        value
        for value in (getattr(gridgen, n) for n in gridgen.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(errors) >= 13
    assert all(issubclass(e, gridgen.GridgenError) for e in errors)
    assert issubclass(gridgen.RequestTimeout, TimeoutError) and issubclass(
        gridgen.StartupTimeout, TimeoutError
    )
    assert issubclass(gridgen.StartupError, gridgen.WorkerError)


def test_the_api_reference_lists_every_public_name() -> None:
    """docs/api.md names its members explicitly (in reading order): none may be left out."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    for module in (gridgen, gridgen.sdxl):
        section = text.split(f"::: {module.__name__}\n", 1)[1].split(":::", 1)[0]
        listed = {
            line.strip()[2:] for line in section.splitlines() if line.strip().startswith("- ")
        }
        assert set(module.__all__) - {"__version__"} == listed, module.__name__
