"""Shared by the codec tests and the control-socket fuzz tests.

Imported by name (``from helpers.fuzz import ...``), like helpers.runtime.
"""

from __future__ import annotations

from hypothesis import strategies as st

# The numeric dtypes the wire codec documents, restated here (not imported from the codec)
# so the tests check the documented spec rather than the code against itself.
DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]


def mutate(draw: st.DrawFn, seed: bytes, *, min_edits: int, max_insert: int) -> bytes:
    """Apply 1 to 4 (or ``min_edits`` to 4) random byte edits to ``seed``: flip a bit, set,
    insert, delete or truncate."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(min_edits, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=max_insert))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)
