"""Imported once by the forkserver that CPU ranks are forked from (:mod:`gridgen._worker_start`).

Importing torch loads no CUDA driver; nothing imported here may call into CUDA, or every
rank forked afterwards would inherit a broken CUDA state.
"""

from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed  # noqa: F401
import zmq  # noqa: F401

from . import _worker_main  # noqa: F401


@atexit.register
def _remove_listener() -> None:
    # The forkserver exits once the host is gone. Its listening socket is a file in the
    # host's multiprocessing temp dir, which a host killed by SIGKILL never removes.
    from multiprocessing.forkserver import _forkserver

    address = getattr(_forkserver, "_forkserver_address", None)
    if getattr(_forkserver, "_forkserver_pid", None) is not None or not isinstance(address, str):
        return  # not the forkserver itself
    for remove, path in ((os.unlink, address), (os.rmdir, os.path.dirname(address))):
        with contextlib.suppress(OSError):
            remove(path)
