"""Whether a model hub can be reached at all, asked before a download is attempted."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

__all__ = ["hub_reachable"]

_HUB_PROBE_TIMEOUT_S = 2.0


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """False when offline mode is set or the hub's host does not accept a TCP connection quickly.

    The probe (DNS included) runs in a daemon thread so a resolver that hangs cannot
    block the caller longer than ``timeout``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="gridgen-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
