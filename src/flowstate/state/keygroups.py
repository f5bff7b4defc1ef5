"""Key groups: the unit in which keyed state is partitioned, stored and (later) redistributed.

A key maps to one of ``max_parallelism`` key groups through a **stable** hash (CRC-32 of a canonical
byte encoding of the key), never Python's salted ``hash()``: the same key lands in the same group in
every process, on every run, so state written by one run is found by the next. CRC-32 alone spreads
keys that differ in one character poorly over contiguous ranges (``"split-0"`` … ``"split-9"`` all
fell in one half of the groups), so it is mixed by a multiplication with the 32-bit golden ratio
(Fibonacci hashing) and reduced to the range by multiply-shift, which takes the mixed high bits. Subtask ``i`` of
``p`` owns a contiguous range of key groups, computed exactly as Flink does, so that a restore at
another parallelism reads whole ranges.
"""

from __future__ import annotations

import struct
from zlib import crc32

DEFAULT_MAX_PARALLELISM = 128

_pack_float = struct.Struct(">d").pack


def stable_key_bytes(key: object) -> bytes:
    """A canonical byte encoding of ``key`` for hashing.

    Supported: ``str``, ``bytes``, ``int``, ``bool``, ``float``, ``None`` and tuples of these.
    Anything else raises ``TypeError``: a key must hash the same in every process.
    """
    t = type(key)
    if t is str:
        return key.encode()  # type: ignore[union-attr]
    if t is bytes:
        return key  # type: ignore[return-value]
    if t is int or t is bool:
        return b"i" + str(int(key)).encode()  # type: ignore[call-overload]
    if t is float:
        return b"f" + _pack_float(key)
    if key is None:
        return b"\x00none"
    if t is tuple:
        parts = [stable_key_bytes(k) for k in key]  # type: ignore[union-attr]
        return b"t" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    raise TypeError(
        f"keys must be str, bytes, int, float, bool, None or tuples of these, not {t.__name__}: "
        "key_by must return a value that hashes the same in every process"
    )


GOLDEN = 0x9E3779B1
"""2**32 divided by the golden ratio: the multiplier of Fibonacci hashing."""


def key_group_of(key: object, max_parallelism: int) -> int:
    """The key group of ``key``. ``flowstate.runtime.output`` inlines the same formula for speed."""
    data = key.encode() if type(key) is str else stable_key_bytes(key)  # type: ignore[union-attr]
    return ((crc32(data) * GOLDEN) & 0xFFFFFFFF) * max_parallelism >> 32


def key_group_range(max_parallelism: int, parallelism: int, subtask: int) -> range:
    """The key groups owned by ``subtask`` of ``parallelism`` (Flink's operator-index ranges)."""
    if not 0 < parallelism <= max_parallelism:
        raise ValueError(f"parallelism {parallelism} must be between 1 and max_parallelism {max_parallelism}")
    if not 0 <= subtask < parallelism:
        raise ValueError(f"subtask {subtask} out of range for parallelism {parallelism}")
    start = (subtask * max_parallelism + parallelism - 1) // parallelism
    end = ((subtask + 1) * max_parallelism - 1) // parallelism
    return range(start, end + 1)


def subtask_for_key_group(key_group: int, max_parallelism: int, parallelism: int) -> int:
    """The subtask that owns ``key_group``; the inverse of ``key_group_range``."""
    return key_group * parallelism // max_parallelism


def routing_table(max_parallelism: int, parallelism: int) -> list[int]:
    """Key group → subtask, for fast routing of records."""
    return [subtask_for_key_group(g, max_parallelism, parallelism) for g in range(max_parallelism)]
