"""A worker whose module reads the environment when it is imported (as examples/seed_app_fastapi.py does)."""

from __future__ import annotations

import os
import sys
from typing import Any

from gridgen import DistributedWorker

AT_IMPORT = os.environ.get("GRIDGEN_TEST_MARK")


class EnvWorker(DistributedWorker):
    def __call__(self, **payload: Any) -> Any:
        print(f"mark {os.environ.get('GRIDGEN_TEST_MARK')}", flush=True)
        return {"at_import": AT_IMPORT, "now": os.environ.get("GRIDGEN_TEST_MARK"), "pid": os.getpid(),
                "torch_preloaded": "torch" in sys.modules}
