"""The runner's settings, checked once when the runner is built.

Every other owner reads its limits from one :class:`RunnerOptions` and never
validates them again. What each setting means is documented on
:class:`gridgen.DistributedRunner`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

__all__ = ["Option", "RunnerOptions", "collective_timeout_of", "log_ignored_ports", "normalize_payload"]

logger = logging.getLogger("gridgen.runner")

DEFAULT_COLLECTIVE_TIMEOUT = 600.0
DEFAULT_BATCH_WAIT = 0.02
"""Seconds the head of the queue waits for company: a burst of 8 one-image requests sent
together over HTTP then forms one call (docs/concepts.md, "Latency", has the figures)."""

T = TypeVar("T")


@dataclass
class RunnerOptions:
    """The settings of one runner (see :class:`gridgen.DistributedRunner` for each)."""

    max_queue: int = 64
    request_timeout: float | None = None
    stream_idle_timeout: float | None = None
    error_grace: float = 5.0
    cancel_grace: float = 30.0
    auto_restart: bool = False
    keepalive_payload: dict[str, Any] | None = None
    keepalive_interval: float | None = None
    max_message_bytes: int = 256 * 1024 * 1024
    stream_buffer: int = 64
    collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT
    stop_grace: float = 30.0
    start_timeout: float | None = None
    prefix_output: bool = True
    max_batch: int = 8
    max_batch_units: int | None = None
    batch_wait: float = DEFAULT_BATCH_WAIT
    batch_sizes: tuple[int, ...] | None = None
    cwd: str | None = None
    set_device: bool = True

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.stream_buffer < 1:
            raise ValueError(f"stream_buffer must be >= 1, got {self.stream_buffer}")
        if self.keepalive_payload is not None and self.keepalive_interval is None:
            raise ValueError("keepalive_payload needs keepalive_interval (how long the runner idles first)")
        if self.keepalive_interval is not None and self.keepalive_payload is None:
            self.keepalive_payload = {}  # an interval alone keeps the ranks warm with {}, as fal does
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError(f"keepalive_interval must be > 0, got {self.keepalive_interval}")
        if self.keepalive_payload is not None:
            self.keepalive_payload = normalize_payload(self.keepalive_payload)
        for name in ("error_grace", "cancel_grace", "stop_grace", "collective_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if type(self.max_batch) is not int or self.max_batch < 0:
            raise ValueError(f"max_batch must be an int >= 0 (0 or 1: no merging), got {self.max_batch!r}")
        if self.max_batch_units is not None and (type(self.max_batch_units) is not int or self.max_batch_units < 1):
            raise ValueError(f"max_batch_units must be None or an int >= 1, got {self.max_batch_units!r}")
        if self.batch_sizes is not None and (
            not self.batch_sizes or any(type(n) is not int or n < 1 for n in self.batch_sizes)
        ):
            raise ValueError(f"batch_sizes must be None or ints >= 1, got {self.batch_sizes!r}")
        if self.batch_wait < 0:
            raise ValueError(f"batch_wait must be >= 0, got {self.batch_wait}")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")
        if self.cwd is not None:
            self.cwd = os.path.abspath(os.fspath(self.cwd))
            if not os.path.isdir(self.cwd):
                raise ValueError(f"cwd must be an existing directory, got {self.cwd!r}")


def collective_timeout_of(collective_timeout: float | None, timeout: float | None) -> float:
    """The collective timeout: fal's constructor calls it ``timeout``, gridgen's ``collective_timeout``."""
    if timeout is not None and collective_timeout is not None:
        raise ValueError("timeout (fal's name) and collective_timeout are one setting: give one of them")
    value = timeout if timeout is not None else collective_timeout
    return DEFAULT_COLLECTIVE_TIMEOUT if value is None else float(value)


def log_ignored_ports(**given: Any) -> None:
    """fal's port keywords are accepted and ignored, with one log line."""
    named = sorted(name for name, value in given.items() if value is not None)
    if named:
        logger.info(
            "%s accepted and ignored: gridgen uses no ports (an ipc:// socket and a file store "
            "in a private directory)",
            ", ".join(named),
        )


def normalize_payload(payload: Any) -> dict[str, Any]:
    """A request payload as the dict of keyword arguments ``__call__`` gets (pydantic models
    are dumped); raise TypeError/ValueError naming the rule it breaks."""
    if hasattr(payload, "model_dump") and not isinstance(payload, Mapping):
        payload = payload.model_dump()
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a dict of keyword arguments, got {type(payload).__name__}")
    for key in payload:
        if not isinstance(key, str):
            raise TypeError(f"payload keys must be str (they become keyword arguments), got {key!r}")
    # The runner says whether a request streams (invoke: False, stream: True), whatever the
    # caller put there, as fal does: fal programs send the key in their payloads.
    return {key: value for key, value in payload.items() if key != "streaming"}


class Option(Generic[T]):
    """A runner attribute that is one of its :class:`RunnerOptions`."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Option[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> T | Option[T]:
        if obj is None:
            return self
        value: T = getattr(obj.options, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj.options, self.name, value)  # type: ignore[attr-defined]
