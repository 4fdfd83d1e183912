"""What a worker process prints and logs: each line carries its rank.

Output is prefixed at the file-descriptor level (so output from C extensions such as
NCCL and CUDA is prefixed too) by pump threads, which the process drains before it exits.
With ``GRIDGEN_LOG_FORMAT=json`` in the environment (``gridgen serve --log-format json``)
each line is a JSON object instead, with its ``rank``: log records as such, any other
output line as its ``message``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
import time
from typing import Any

__all__ = ["LOG_FORMAT_ENV", "configure_logging", "drain_output", "prefix_output"]

LOG_FORMAT_ENV = "GRIDGEN_LOG_FORMAT"


def _json_logs() -> bool:
    return os.environ.get(LOG_FORMAT_ENV) == "json"


def _json_line(created: float, level: str, logger: str, message: str, rank: int) -> str:
    when = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")
    entry = {"time": when.replace("+00:00", "Z"), "level": level, "logger": logger, "message": message, "rank": rank}
    return json.dumps(entry, ensure_ascii=False)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return _json_line(record.created, record.levelname, record.name, message, getattr(record, "rank", -1))


class _RankRecordFactory:
    """Adds ``record.rank`` to every log record made in this process."""

    def __init__(self, rank: int) -> None:
        self._rank = rank
        self._base = logging.getLogRecordFactory()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._base(*args, **kwargs)
        record.rank = self._rank
        return record


def configure_logging(rank: int, level: int) -> None:
    logging.setLogRecordFactory(_RankRecordFactory(rank))
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _JsonFormatter() if _json_logs()
            else logging.Formatter("%(levelname)s %(name)s [rank %(rank)s]: %(message)s")
        )
        root.addHandler(handler)
    logging.getLogger("gridgen").setLevel(level)


def prefix_output(rank: int) -> list[threading.Thread]:
    """Route this process's fd 1 and 2 through threads that prefix each line with the rank.

    Done at the file-descriptor level so output from C extensions (NCCL, CUDA) is prefixed too.
    """
    prefix = b"[rank %d] " % rank
    own = (prefix, b"[debug] " + prefix)  # lines rank_print already prefixed keep one prefix

    def prefixed(line: bytes) -> bytes:
        return (line if line.startswith(own) else prefix + line) + b"\n"

    def as_json(line: bytes) -> bytes:
        if line.startswith(b'{"time"'):  # a log record, formatted already
            return line + b"\n"
        text = line.decode("utf-8", "replace")
        return _json_line(time.time(), "INFO", "gridgen.worker.output", text, rank).encode() + b"\n"

    convert = as_json if _json_logs() else prefixed

    pumps = []
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        stream.flush()
        target = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)

        def pump(read_end: int = read_end, target: int = target) -> None:
            with os.fdopen(read_end, "rb", buffering=0) as source:
                pending = b""
                while chunk := source.read(65536):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if lines:
                        os.write(target, b"".join(map(convert, lines)))
                if pending:
                    os.write(target, convert(pending))

        thread = threading.Thread(target=pump, name=f"gridgen-fd{fd}", daemon=True)
        thread.start()
        pumps.append(thread)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return pumps


def drain_output(pumps: list[threading.Thread]) -> None:
    """Close fds 1 and 2 so the pump threads see EOF, and let them write their last lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    for thread in pumps:
        thread.join(timeout=2)
