"""Plain forms of the everyday Python values that payloads and results carry.

fal's SDK pickles payloads and results, so programs written for it send pydantic
``request.dict()`` output (URLs, enums, datetimes, UUIDs, paths) and return whatever
is at hand. gridgen's codec carries plain data only (nothing is unpickled), so these
values travel as their JSON form, and arrive as that form:

=======================================  =================================================
value                                    sent as
=======================================  =================================================
``pathlib`` paths                        ``str(path)``
``datetime``, ``date``, ``time``         ``isoformat()``
``uuid.UUID``                            ``str(uuid)``
``Enum`` members                         their ``value`` (itself encoded by the same rules)
``set``, ``frozenset``                   a list, a tuple (hashable: it can be a dict key),
                                         sorted when the items can be sorted
dataclass instances                      a dict of their fields
pydantic models                          ``model_dump()``
pydantic URLs                            ``str(url)``
=======================================  =================================================

``int``/``str`` enums (``IntEnum``, ``StrEnum``) are already sent as their base type.
Anything else is refused by the codec with an error that names where it sits.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import sys
import uuid
from datetime import date, datetime, time
from typing import Any, Final

__all__ = ["NOT_PLAIN", "children", "plain_form"]

NOT_PLAIN: Final = object()
"""What :func:`plain_form` returns for a value it has no plain form for."""


def _pydantic_urls() -> tuple[type, ...]:
    """pydantic's URL classes, if pydantic is imported (it is never imported here)."""
    found: list[type] = []
    core = sys.modules.get("pydantic_core")
    if core is not None:
        found += [getattr(core, name) for name in ("Url", "MultiHostUrl") if hasattr(core, name)]
    networks = sys.modules.get("pydantic.networks")
    if networks is not None:
        found += [getattr(networks, name) for name in ("_BaseUrl", "_BaseMultiHostUrl") if hasattr(networks, name)]
    return tuple(cls for cls in found if isinstance(cls, type))


def _is_pydantic_model(obj: object) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(obj, pydantic.BaseModel)


def _set_items(obj: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(obj)
    except TypeError:  # mixed or unorderable items: any order
        return list(obj)


def plain_form(obj: Any) -> Any:
    """The plain form of ``obj`` (see the table above), or :data:`NOT_PLAIN`.

    The result may still hold values that need encoding (a dataclass's fields, an enum's
    value): the codec encodes it by its own rules in turn.
    """
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if isinstance(obj, (datetime, date, time)):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, set):
        return _set_items(obj)
    if isinstance(obj, frozenset):
        return tuple(_set_items(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    if _is_pydantic_model(obj):
        return obj.model_dump()
    urls = _pydantic_urls()
    if urls and isinstance(obj, urls):
        return str(obj)
    return NOT_PLAIN


def children(obj: Any, path: str) -> list[tuple[Any, str]] | None:
    """The values inside a value that has a plain form, with their paths for error messages
    (``value.field`` for a dataclass, ``an item of value`` for a set); None for other values."""
    if isinstance(obj, (set, frozenset)):
        return [(item, f"an item of {path}") for item in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(getattr(obj, field.name), f"{path}.{field.name}") for field in dataclasses.fields(obj)]
    if isinstance(obj, enum.Enum):
        return [(obj.value, f"{path}.value")]
    return None
