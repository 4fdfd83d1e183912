"""Workers for the Ray tests, importable by Ray's worker processes (the cluster's PYTHONPATH
includes this folder): a plain module name of its own, like ray_helpers."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from gridgen.testing import ProbeWorker


class LedgerWorker(ProbeWorker):
    """``ProbeWorker`` that, when the payload names a ``ledger`` file, appends one JSON line
    when a request starts on a rank and one with its outcome: a test outside the cluster
    can see whether GPU work ran to the end or stopped because it was cancelled."""

    def setup(self, setup_delay: float = 0.0, **kwargs: Any) -> None:
        """``setup_delay``: seconds every (re)start takes, so that a restart can be watched."""
        time.sleep(setup_delay)
        super().setup(**kwargs)

    def __call__(self, streaming: bool = False, ledger: str | None = None, **payload: Any) -> Any:
        if ledger is None:
            return super().__call__(streaming=streaming, **payload)
        tag = payload.get("message", "")
        self._write(ledger, {"event": "start", "tag": tag, "rank": self.rank, "pid": os.getpid()})
        result = super().__call__(streaming=streaming, **payload)
        self._write(ledger, {"event": "end", "tag": tag, "rank": self.rank, "result": result})
        return result

    @staticmethod
    def _write(path: str, entry: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
