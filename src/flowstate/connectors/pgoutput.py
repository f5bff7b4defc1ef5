"""Decoding PostgreSQL's logical replication protocol (the ``pgoutput`` plugin, protocol version 1)
into ``Change`` records: pure, over bytes (the column values' text forms go through a loader the
caller gives, psycopg's in ``flowstate.connectors.postgres_cdc``).

Rules:

1. A Relation message ('R') precedes the first change of its table in a session and describes its
   columns; a change of a table with no Relation seen is a protocol error (``KeyError``).
2. A column sent as 'n' is ``None``; an unchanged TOASTed value ('u') is not sent and is left out of
   the row's dict.
3. ``before`` of an update is present only when the server sends the old row ('K' or 'O': REPLICA
   IDENTITY FULL or a changed key).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import struct
from collections.abc import Callable
from typing import Any

POSTGRES_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)
"""Timestamps of the protocol count microseconds from this instant."""


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One row change. ``before``/``after`` map column names to values (``None`` where the operation
    has none: ``before`` of an insert, ``after`` of a delete); ``lsn`` is the commit LSN of its
    transaction, ``commit_time`` its commit time (UTC)."""

    op: str
    """``insert``, ``update`` or ``delete``; ``read`` for a row of the initial snapshot."""
    table: str
    """``schema.table``."""
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    lsn: str
    commit_time: _dt.datetime


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class PgoutputDecoder:
    """The relations seen so far and the column loaders of one replication session."""

    def __init__(self, loader_of: Callable[[int], Callable[[bytes], Any]]) -> None:
        self._loader_of = loader_of
        self._relations: dict[int, tuple[str, list[tuple[str, int]]]] = {}
        self._loaders: dict[int, Callable[[bytes], Any]] = {}

    def relation(self, data: bytes) -> None:
        """A Relation message ('R'): the table's name and columns, for the changes that follow."""
        (oid,) = struct.unpack_from("!I", data, 1)
        offset = 5
        namespace, offset = _cstring(data, offset)
        name, offset = _cstring(data, offset)
        offset += 1  # replica identity
        (count,) = struct.unpack_from("!H", data, offset)
        offset += 2
        columns = []
        for _ in range(count):
            offset += 1  # flags
            column, offset = _cstring(data, offset)
            type_oid, _ = struct.unpack_from("!Ii", data, offset)
            offset += 8
            columns.append((column, type_oid))
        self._relations[oid] = (f"{namespace}.{name}", columns)

    def change(self, kind: bytes, data: bytes, lsn: str, time: _dt.datetime) -> Change:
        """An Insert, Update or Delete message ('I', 'U', 'D') of a transaction committed at ``lsn``."""
        (oid,) = struct.unpack_from("!I", data, 1)
        table, columns = self._relations[oid]
        offset = 5
        before = after = None
        if kind == b"I":
            offset += 1  # 'N'
            after, offset = self._tuple(data, offset, columns)
            op = "insert"
        elif kind == b"U":
            if data[offset:offset + 1] in (b"K", b"O"):
                before, offset = self._tuple(data, offset + 1, columns)
            offset += 1  # 'N'
            after, offset = self._tuple(data, offset, columns)
            op = "update"
        else:
            before, offset = self._tuple(data, offset + 1, columns)
            op = "delete"
        return Change(op, table, before, after, lsn, time)

    def _tuple(self, data: bytes, offset: int, columns: list[tuple[str, int]]) -> tuple[dict[str, Any], int]:
        (count,) = struct.unpack_from("!H", data, offset)
        offset += 2
        values: dict[str, Any] = {}
        for i in range(count):
            name, type_oid = columns[i]
            kind = data[offset:offset + 1]
            offset += 1
            if kind == b"t":
                (length,) = struct.unpack_from("!I", data, offset)
                offset += 4
                values[name] = self._load(type_oid, data[offset:offset + length])
                offset += length
            elif kind == b"n":
                values[name] = None
            # 'u': an unchanged TOASTed value, not sent: left out of the dict
        return values, offset

    def _load(self, type_oid: int, text: bytes) -> Any:
        loader = self._loaders.get(type_oid)
        if loader is None:
            loader = self._loaders[type_oid] = self._loader_of(type_oid)
        return loader(text)


def _cstring(data: bytes, offset: int) -> tuple[str, int]:
    end = data.index(b"\0", offset)
    return data[offset:end].decode(), end + 1
