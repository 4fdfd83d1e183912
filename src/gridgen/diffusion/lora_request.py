"""The ``loras`` request field every family's request model has: which adapters, at what
scale (see :mod:`gridgen.diffusion.lora` for where adapters come from and the rules)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_LORAS_PER_REQUEST",
    "MAX_LORA_SCALE",
    "LoraSpec",
    "Loras",
    "active_loras",
    "name_problem",
]

MAX_LORAS_PER_REQUEST = 4
"""Most adapters one request may name."""
MAX_LORA_SCALE = 2.0
"""Scales run from ``-MAX_LORA_SCALE`` to ``MAX_LORA_SCALE``."""
MAX_NAME_CHARS = 128
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def name_problem(name: str) -> tuple[str, str] | None:
    """``(rule, message)`` when ``name`` cannot name an adapter, else None."""
    if any(sep in name for sep in ("/", "\\", os.sep)):
        return "lora_path", f"adapter {name!r}: a request names a registered adapter, never a path"
    if not 1 <= len(name) <= MAX_NAME_CHARS or not _NAME.fullmatch(name):
        return "lora_name", (
            f"adapter {name!r}: a name is 1 to {MAX_NAME_CHARS} letters, digits and _ . + - "
            "and does not start with . + or -"
        )
    return None


class LoraSpec(BaseModel):
    """One adapter a request asks for: a registered ``name`` and its ``scale``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="A registered adapter's name (never a path).")
    scale: float = Field(
        default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE,
        description="How strongly it applies; 0 leaves it out.",
    )

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise PydanticCustomError(problem[0], "{message}", {"message": problem[1]})
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, (bool, str, bytes)):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value


def _each_once(loras: tuple[LoraSpec, ...]) -> tuple[LoraSpec, ...]:
    seen: set[str] = set()
    for spec in loras:
        if spec.name in seen:
            raise PydanticCustomError(
                "lora_duplicate", "{message}", {"message": f"adapter {spec.name!r} is named twice"}
            )
        seen.add(spec.name)
    return loras


Loras = Annotated[
    tuple[LoraSpec, ...],
    Field(
        max_length=MAX_LORAS_PER_REQUEST,
        description=(
            f"LoRA adapters to apply, by registered name, each with a scale from "
            f"{-MAX_LORA_SCALE:g} to {MAX_LORA_SCALE:g} (default 1); at most "
            f"{MAX_LORAS_PER_REQUEST}. Empty: the base model."
        ),
    ),
    AfterValidator(_each_once),
]
"""The type of every family's ``loras`` request field (default ``()``)."""


def active_loras(loras: Iterable[LoraSpec] | None) -> tuple[tuple[str, float], ...]:
    """``((name, scale), ...)`` sorted by name, scale-0 adapters left out: what a request runs
    with, and the adapter part of its merge key (the same set in any order is one key)."""
    return tuple(sorted((s.name, float(s.scale)) for s in loras or () if s.scale != 0))
