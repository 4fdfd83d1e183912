"""The service's log lines: plain text, or one JSON object per line for log shippers.

Both formats name the request a line is about: the HTTP request being served
(:func:`gridgen.server.request_ids.current_request_id`), or the runner's own lines about
a request (their ``extra={"request_id": ...}``). Text::

    INFO gridgen.server: request 7: client disconnected; cancelled [request_id=4f1c...]

JSON (``gridgen serve --log-format json``), one object per line::

    {"time": "2026-12-09T10:31:02.114Z", "level": "INFO", "logger": "gridgen.server",
     "message": "request 7: client disconnected; cancelled", "request_id": "4f1c..."}

with ``rank`` on lines about one worker rank and ``exception`` (the formatted
traceback) when there is one. :func:`logging_config` configures gridgen's loggers and
uvicorn's (its access log included) the same way.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Literal

from .request_ids import current_request_id

__all__ = ["JsonFormatter", "RequestIdFilter", "TextFormatter", "announce", "logging_config"]

LogFormat = Literal["text", "json"]


class RequestIdFilter(logging.Filter):
    """Gives every record a ``request_id`` attribute: its own ``extra``, else the HTTP
    request being served, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [request_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            return text
        first, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{first} [request_id={request_id}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "rank"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(level: str = "info", log_format: LogFormat = "text") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict for the service: every logger (uvicorn's and
    gridgen's) to stderr in ``log_format``, at ``level``. Pass it as uvicorn's ``log_config``."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', got {log_format!r}")
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
               "formatter": "gridgen", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"gridgen": {"()": formatter}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # uvicorn's own handlers would print a second, unformatted copy.
            name: {"handlers": [], "level": level.upper(), "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def announce(text: str, log_format: LogFormat = "text") -> None:
    """A line for the operator on stderr, whatever the log level: as is, or as a JSON log line."""
    if log_format == "json":
        record = logging.LogRecord("gridgen.cli", logging.INFO, __file__, 0, text, None, None)
        text = JsonFormatter().format(record)
    print(text, file=sys.stderr, flush=True)
