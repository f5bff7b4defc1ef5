"""Row keys of the RocksDB backend: the key prefix of a key, and the current key's prefix.

Every row key starts with the **key prefix** of its key: the key group (two bytes, big-endian), the
length of the key's canonical encoding (a varint) and that encoding (``flowstate.state.codec``). The
prefix is prefix-free, so the rows of one key are exactly the rows that start with its prefix, and the
rows of a key-group range are one contiguous range.

The prefix of the current key is computed once per record (not once per state access) and
remembered for keys seen recently. ``str`` keys, by far the most common, take an inlined path that
computes the same bytes as ``key_prefix`` (a test compares them) without the generic dispatch.
"""

from __future__ import annotations

import struct
from typing import Any
from zlib import crc32

from flowstate.state.api import KeyContext
from flowstate.state.codec import KEY_STR, decode_key, encode_key, read_varint, varint
from flowstate.state.keygroups import GOLDEN, key_group_of

_PREFIX_CACHE_ENTRIES = 1 << 16
_MISS = object()
pack_sequence = struct.Struct(">Q").pack
"""The 8-byte big-endian sequence number that follows the key prefix in a list state's rows."""


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix`` (``None``:
    there is none, ``prefix`` is all 0xff)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def key_prefix(key: Any, max_parallelism: int) -> bytes:
    """The prefix of every row of ``key``: key group, length, canonical encoding."""
    encoded = encode_key(key)
    return key_group_of(key, max_parallelism).to_bytes(2, "big") + varint(len(encoded)) + encoded


def split_prefix(row: bytes) -> tuple[bytes, Any]:
    """The key prefix a row key starts with, and the key it encodes."""
    size, pos = read_varint(row, 2)
    return row[: pos + size], decode_key(row[pos : pos + size])


class RocksKeyContext(KeyContext):
    """The current key, and its key prefix, computed once per record (not once per state access)
    and remembered for keys seen recently (a bounded cache of ``str``, ``bytes`` and ``int`` keys:
    the types whose equal values always have equal prefixes)."""

    __slots__ = ("_cache", "_groups", "_maxp", "_prefix", "_prefix_of")

    def __init__(self, max_parallelism: int) -> None:
        super().__init__()
        self._maxp = max_parallelism
        self._prefix_of: Any = _MISS
        self._prefix = b""
        self._cache: dict[Any, bytes] = {}
        self._groups = [group.to_bytes(2, "big") for group in range(max_parallelism)]

    def prefix(self) -> bytes:
        key = self.current_key
        if key is self._prefix_of:
            return self._prefix
        cache = self._cache
        prefix = cache.get(key) if type(key) in _CACHED else None
        if prefix is None:
            prefix = self._compute(key)
        self._prefix_of = key
        self._prefix = prefix
        return prefix

    def prefixes(self, keys: list[Any]) -> list[bytes]:
        """The key prefixes of ``keys`` (the current key is left as it is), remembered so that
        ``prefix()`` finds them while these keys are processed (the cache is emptied first when
        they might not fit)."""
        cache = self._cache
        if len(cache) + len(keys) > _PREFIX_CACHE_ENTRIES:
            cache.clear()
        get = cache.get
        compute = self._compute
        groups = self._groups
        maxp = self._maxp
        out: list[bytes] = []
        append = out.append
        for key in keys:
            if type(key) is str:
                prefix = get(key)
                if prefix is None:
                    # _compute's str path, inlined (a call per key is a good part of the cost)
                    data = key.encode("utf-8", "surrogatepass")
                    size = len(data) + 1
                    if size < 0x80:
                        prefix = cache[key] = (groups[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * maxp >> 32]
                                               + bytes((size, KEY_STR)) + data)
                    else:
                        prefix = compute(key)
            else:
                prefix = get(key) if type(key) in _CACHED else None
                if prefix is None:
                    prefix = compute(key)
            append(prefix)
        return out

    def _compute(self, key: Any) -> bytes:
        if type(key) is str:
            # key_prefix, inlined for str (stable_key_bytes of a str is its UTF-8 bytes).
            data = key.encode("utf-8", "surrogatepass")
            size = len(data) + 1
            group = self._groups[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * self._maxp >> 32]
            prefix = (group + bytes((size, KEY_STR)) + data if size < 0x80
                      else group + varint(size) + bytes((KEY_STR,)) + data)
        else:
            prefix = key_prefix(key, self._maxp)
        if type(key) in _CACHED:
            cache = self._cache
            if len(cache) >= _PREFIX_CACHE_ENTRIES:
                cache.clear()
            cache[key] = prefix
        return prefix


_CACHED = frozenset({str, bytes, int})
