"""Where a value that cannot be encoded sits, for error messages such as
``cannot encode result['images'][2]: objects of type set are not supported``.

Shared by the wire codec (:mod:`gridgen._codec`) and the JSON converter (:mod:`gridgen._json`).
"""

from __future__ import annotations

from ._values import children as plain_children

__all__ = ["EncodeFailure", "find_path", "unsupported"]

SUPPORTED = (
    "dicts, lists, tuples, str, int, float, bool, None, bytes, PIL images, "
    "numpy arrays or torch tensors"
)


class EncodeFailure(Exception):
    """Raised inside the msgpack ``default`` hook; ``encode`` adds the path."""

    def __init__(self, obj: object, reason: str, error: type[Exception] = TypeError) -> None:
        super().__init__(reason)
        self.obj = obj
        self.reason = reason
        self.error = error


def unsupported(obj: object) -> EncodeFailure:
    cls = type(obj)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return EncodeFailure(
        obj, f"objects of type {name} are not supported; return {SUPPORTED} instead"
    )


def _render_key(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 60 else f"{text[:57]}..."


def find_path(root: object, target: object, name: str) -> str:
    """Where ``target`` (by identity) sits inside ``root``, as ``name['a'][2]``."""
    if root is target:
        return name
    stack: list[tuple[object, str]] = [(root, name)]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            children = []
            for key, value in node.items():
                if key is target:
                    return f"a dict key of {path} ({_render_key(key)})"
                children.append((value, f"{path}[{_render_key(key)}]"))
        elif isinstance(node, (list, tuple)):
            children = [(value, f"{path}[{i}]") for i, value in enumerate(node)]
        else:
            inside = plain_children(node, path)  # a dataclass's fields, a set's items
            if inside is None:
                continue
            children = inside
        for value, child_path in children:
            if value is target:
                return child_path
        stack.extend(reversed(children))
    return f"a value inside {name}"
