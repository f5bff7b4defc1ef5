"""Byte encodings of keys and values for state backends that store bytes (RocksDB).

**Keys** are encoded canonically: keys that are equal give equal bytes, so a key written by one
record is found by the next (and a map key by ``MapState.get``). The keys are those of
``flowstate.state.keys`` (``None``, ``bool``, ``int``, ``float`` but NaN, ``str``, ``bytes``,
``datetime.date`` and tuples of these): a tag byte, then the payload. Numbers that compare equal
encode alike: ``True`` and ``1``, ``2.0`` and ``2``, ``-0.0`` and ``0`` all encode as the integer, and
decode as it (``decode_key(encode_key(True)) == 1``); a subclass encodes as its plain value. Anything
else raises ``UnsupportedKeyError``. (Older snapshots may hold pickled map keys, tag 6: they still
decode.)

**Values** are a tag byte, then msgpack for plain data (``None``, ``bool``, ``int`` within 64 bits,
``float``, ``str``, ``bytes``, and ``list``, ``dict`` and ``tuple`` of these; tuples come back as
tuples) or pickle for anything else (another type anywhere inside the value, a subclass, a big int).
A value decodes to an equal value of the same types.

``varint`` lengths make composite keys prefix-free (see ``flowstate.state.rocksdb``).
"""

from __future__ import annotations

import datetime
import math
import pickle
import struct
from typing import Any

import msgpack

from flowstate.state.keys import UnsupportedKeyError, plain
from flowstate.state.values import plain_data

KEY_NONE, KEY_INT, KEY_FLOAT, KEY_STR, KEY_BYTES, KEY_TUPLE, KEY_PICKLE, KEY_DATE = range(8)
VALUE_MSGPACK, VALUE_PICKLE = 1, 2
_TUPLE_EXT = 1

_pack_double = struct.Struct(">d").pack
_unpack_double = struct.Struct(">d").unpack
_B_NONE = bytes([KEY_NONE])
_B_INT = bytes([KEY_INT])
_B_FLOAT = bytes([KEY_FLOAT])
_B_STR = bytes([KEY_STR])
_B_BYTES = bytes([KEY_BYTES])
_B_TUPLE = bytes([KEY_TUPLE])
_B_DATE = bytes([KEY_DATE])
_DATE = datetime.date


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True) if n else b""


def encode_key(key: Any) -> bytes:
    """The canonical bytes of ``key`` (see the module docstring)."""
    t = type(key)
    if t is str:
        return _B_STR + key.encode("utf-8", "surrogatepass")
    if t is int or t is bool:
        return _B_INT + _int_bytes(int(key))
    if t is bytes:
        return _B_BYTES + key
    if t is tuple:
        parts = [_B_TUPLE]
        for item in key:
            encoded = encode_key(item)
            parts.append(varint(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if key is None:
        return _B_NONE
    if t is float:
        if key.is_integer():
            return _B_INT + _int_bytes(int(key))
        if math.isnan(key):
            raise UnsupportedKeyError(key, "NaN is not a key (it is not equal to itself)")
        return _B_FLOAT + _pack_double(key)
    if t is _DATE:
        return _B_DATE + _int_bytes(key.toordinal())
    if isinstance(key, (str, int, float, bytes, tuple)):
        return encode_key(plain(key))
    raise UnsupportedKeyError(key)


def decode_key(data: bytes) -> Any:
    """The inverse of ``encode_key`` (up to the normalisations it makes)."""
    tag = data[0]
    if tag == KEY_STR:
        return data[1:].decode("utf-8", "surrogatepass")
    if tag == KEY_INT:
        return int.from_bytes(data[1:], "big", signed=True)
    if tag == KEY_BYTES:
        return data[1:]
    if tag == KEY_TUPLE:
        items = []
        pos, end = 1, len(data)
        while pos < end:
            size, pos = read_varint(data, pos)
            items.append(decode_key(data[pos : pos + size]))
            pos += size
        return tuple(items)
    if tag == KEY_NONE:
        return None
    if tag == KEY_FLOAT:
        return _unpack_double(data[1:])[0]
    if tag == KEY_DATE:
        return _DATE.fromordinal(int.from_bytes(data[1:], "big", signed=True))
    if tag == KEY_PICKLE:
        return pickle.loads(data[1:])
    raise ValueError(f"not an encoded key: unknown tag {tag}")


class ValueCodec:
    """Encodes values as a tag byte plus msgpack, or pickle when msgpack would not give the value
    back exactly. One per backend (it keeps reusable packers); not thread-safe."""

    __slots__ = ("_depth", "_packers")

    def __init__(self) -> None:
        # One packer per tuple nesting depth: the packer of depth d is busy with the enclosing value
        # while a tuple inside it is packed, as an extension, by the packer of depth d + 1.
        self._packers = [self._new_packer()]
        self._depth = 0

    def _new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(use_bin_type=True, strict_types=True, default=self._default)

    def _default(self, obj: Any) -> Any:
        if type(obj) is not tuple:
            raise TypeError(f"{type(obj).__name__} is not plain data")
        self._depth = depth = self._depth + 1
        if depth == len(self._packers):
            self._packers.append(self._new_packer())
        try:
            return msgpack.ExtType(_TUPLE_EXT, self._packers[depth].pack(list(obj)))
        finally:
            self._depth = depth - 1

    def encode(self, value: Any) -> bytes:
        t = type(value)
        if t is not int and t is not str and t is not float and not plain_data((value,)):
            # msgpack packs a bytearray, a memoryview (any buffer) as bytes: pickle keeps the type.
            return b"\x02" + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            return b"\x01" + self._packers[0].pack(value)
        except (TypeError, ValueError, OverflowError):
            for packer in self._packers:
                packer.reset()
            self._depth = 0
            return b"\x02" + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def decode(data: bytes) -> Any:
        tag = data[0]
        if tag == VALUE_MSGPACK:
            return msgpack.unpackb(data[1:], raw=False, strict_map_key=False, ext_hook=_ext_hook)
        if tag == VALUE_PICKLE:
            return pickle.loads(data[1:])
        raise ValueError(f"not an encoded value: unknown tag {tag}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _TUPLE_EXT:
        return tuple(msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook))
    raise ValueError(f"not an encoded value: unknown msgpack extension {code}")
