"""The worker class and setup arguments on their way to the spawned workers, by value where needed.

``multiprocessing`` (spawn) normally sends a class by module and name, and re-runs the
host's main script in every child (as ``__mp_main__``) so that classes defined there can
be found. That breaks where users write workers: a class typed into a notebook cell, a
REPL or ``python -`` has no module a child could import, and a script without the
``if __name__ == "__main__":`` guard starts its own runner again inside every worker.

So the host sends each worker's spec with cloudpickle, which keeps importable things by
reference and sends the rest (classes and functions of ``__main__``, of a notebook, of a
closure) by value, and children never re-run the host's main. The spawn pipe is private
to the host and its own children, so pickle is fine there; nothing here touches a socket.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["WorkerNotSendable", "by_value", "main_not_rerun"]

_main_lock = threading.Lock()
_BARE_MAIN = types.ModuleType("__main__")  # no __file__ and no __spec__: nothing to re-run


class WorkerNotSendable(TypeError):
    """The worker class or a setup argument cannot be pickled, even by value."""


class _Packed:
    """Unpickles into the original object: ``pickle.loads`` of cloudpickle's bytes."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.blob,)


def by_value(spec: Any, what: str) -> Any:
    """``spec`` packed for ``Process(args=...)``; the child gets ``spec`` itself back.

    Raises :class:`WorkerNotSendable` naming ``what`` (the worker class) and what to do.
    """
    import cloudpickle

    try:
        return _Packed(cloudpickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise WorkerNotSendable(
            f"{what} or its setup arguments cannot be sent to the worker processes ({exc}). "
            "Move the class into a module file and import it, and keep unpicklable objects "
            "(locks, open files, sockets) out of module globals it uses and out of setup_kwargs: "
            "create them in setup() instead"
        ) from exc


@contextlib.contextmanager
def main_not_rerun() -> Iterator[None]:
    """While processes start: hide the host's ``__main__`` from ``multiprocessing``, which
    reads it to tell each child which script to re-run. Everything a child needs travels
    in its spec (:func:`by_value`) instead.

    ``sys.modules["__main__"]`` is swapped only for the ``start()`` calls, under a lock; a
    thread importing ``__main__`` in that window would see the bare module.
    """
    with _main_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = _BARE_MAIN
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main
