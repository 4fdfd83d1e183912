"""A griffe extension for the docs build (mkdocs.yml): Sphinx roles in docstrings become code.

gridgen's docstrings name other objects the Sphinx way (``:class:`~gridgen.QueueFull```),
which reads well in an editor and in ``help()``, but mkdocstrings renders the role
literally. At build time each role becomes a code span of what Sphinx would show:
``:class:`~a.b.C``` -> ``C``, ``:meth:`a.b.c``` -> ``a.b.c``, ``:meth:`text <a.b.c>``` -> ``text``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxRoles", "plain"]

_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`([^`]+)`")


def _shown(match: re.Match[str]) -> str:
    text = match.group(1).lstrip("!")
    if text.endswith(">") and "<" in text:
        return f"`{text[: text.index('<')].strip()}`"
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text.lstrip('.')}`"


def plain(docstring: str) -> str:
    """``docstring`` with every Sphinx role replaced by a code span of its shown text."""
    return _ROLE.sub(_shown, docstring)


class SphinxRoles(griffe.Extension):
    """Rewrites each loaded object's docstring with :func:`plain`."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
