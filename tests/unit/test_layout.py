"""The layout's promises, read from the source: the generic diffusion package never imports
SDXL's public face, and no two gridgen modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import gridgen

SRC = Path(gridgen.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every gridgen module ``path`` imports: at module level, inside functions, and under
    ``if TYPE_CHECKING`` (a circle of annotations still ties two owners together)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gridgen"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gridgen"):
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # submodules by name
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_generic_diffusion_package_never_imports_gridgen_sdxl() -> None:
    offenders = {
        name: sorted(m for m in imports if m == "gridgen.sdxl" or m.startswith("gridgen.sdxl."))
        for name, imports in _graph().items()
        if name.startswith("gridgen.diffusion")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _is_package_init_edge(source: str, target: str) -> bool:
    # A package's __init__ importing its own submodules, and a submodule reading a sibling
    # through the package, are how packages are built, not circles between owners.
    return target.startswith(source + ".") or source.startswith(target + ".")


def test_no_two_modules_import_each_other() -> None:
    graph = _graph()
    circles = sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if a < b and a in graph.get(b, set()) and not _is_package_init_edge(a, b)
    )
    assert circles == []


def test_the_layout_check_sees_relative_imports_inside_functions() -> None:
    # The checker itself must catch what it is there to catch.
    module = SRC / "diffusion" / "worker.py"
    found = _imports(module)
    assert "gridgen.diffusion.families" in found
    assert "gridgen.diffusion.models" in found
