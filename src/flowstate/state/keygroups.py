"""Key groups: the unit in which keyed state is partitioned, stored and (later) redistributed.

A key maps to one of ``max_parallelism`` key groups through a **stable** hash (CRC-32 of a canonical
byte encoding of the key, equal for equal keys: see ``flowstate.state.keys``), never Python's salted
``hash()``: the same key lands in the same group in
every process, on every run, so state written by one run is found by the next. CRC-32 alone spreads
keys that differ in one character poorly over contiguous ranges (``"split-0"`` … ``"split-9"`` all
fell in one half of the groups), so it is mixed by a multiplication with the 32-bit golden ratio
(Fibonacci hashing) and reduced to the range by multiply-shift, which takes the mixed high bits. Subtask ``i`` of
``p`` owns a contiguous range of key groups, computed exactly as Flink does, so that a restore at
another parallelism reads whole ranges.
"""

from __future__ import annotations

import datetime
import struct
from zlib import crc32

from flowstate.state.keys import UnsupportedKeyError, plain

DEFAULT_MAX_PARALLELISM = 128

_pack_float = struct.Struct(">d").pack
_DATE = datetime.date


def stable_key_bytes(key: object) -> bytes:
    """A canonical byte encoding of ``key`` for hashing: keys that are equal give equal bytes.

    Follows the rules of ``flowstate.state.keys``: a number equal to an ``int`` (``True``, ``1.0``,
    ``-0.0``) encodes as that ``int``; subclasses encode as their plain value; anything that is not
    a key raises ``UnsupportedKeyError`` (a ``TypeError``).
    """
    t = type(key)
    if t is str:
        return key.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
    if t is bytes:
        return key  # type: ignore[return-value]
    if t is int or t is bool:
        return b"i" + str(int(key)).encode()  # type: ignore[call-overload]
    if t is float:
        if key.is_integer():  # type: ignore[attr-defined]
            return b"i" + str(int(key)).encode()  # type: ignore[call-overload]
        if key != key:
            raise UnsupportedKeyError(key, "NaN is not a key (it is not equal to itself)")
        return b"f" + _pack_float(key)
    if key is None:
        return b"\x00none"
    if t is tuple:
        parts = [stable_key_bytes(k) for k in key]  # type: ignore[attr-defined]
        return b"t" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    if t is _DATE:
        return b"d" + str(key.toordinal()).encode()  # type: ignore[attr-defined]
    if isinstance(key, (str, int, float, bytes, tuple)):
        return stable_key_bytes(plain(key))
    raise UnsupportedKeyError(key)


GOLDEN = 0x9E3779B1
"""2**32 divided by the golden ratio: the multiplier of Fibonacci hashing."""


def key_group_of(key: object, max_parallelism: int) -> int:
    """The key group of ``key``. ``flowstate.task.output`` inlines the same formula for speed."""
    data = stable_key_bytes(key)
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
