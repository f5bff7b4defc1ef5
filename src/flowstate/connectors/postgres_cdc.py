"""``PostgresCdcSource``: inserts, updates and deletes of PostgreSQL tables as a replayable stream.

Changes are read through a **logical replication slot** (the built-in ``pgoutput`` plugin and a
publication of the tables). Rules:

1. **One durable slot per source** (``slot=``), created on the first start and never consumed
   directly: it marks what a *completed* checkpoint covers. The reader copies it into a temporary
   slot of its own session (``pg_copy_logical_replication_slot``) and consumes that one, so reading
   never moves the durable slot.
2. **Whole transactions.** Changes are decoded a transaction at a time, in commit order; each change
   carries its transaction's commit LSN and time. The position (the checkpointed state of the single
   split ``"slot"``) is ``(end LSN of the last transaction read whole, changes already read of the
   next one)``: it names the next change to read.
3. **Start and restore.** A reader built without a position starts where the durable slot stands
   (where it was created, or the position of the newest checkpoint that completed). A reader built
   from a position skips every transaction that ended at or before it and
   the changes of the next one it already read; it reads exactly what followed the position.
4. **Advance only after completion** (``AcknowledgingReader``): ``snapshot_for(n)`` remembers the
   position under *n*; ``notify_complete(n)`` advances the durable slot to it
   (``pg_replication_slot_advance``), which lets the server recycle the WAL before it. A restore can
   therefore always re-read from the restored position — unless it is older than the slot (a restore
   falling back past a completed checkpoint), which is refused.
5. **One job per slot.** A reader holds a session advisory lock on the slot's name while it runs; a
   second job on the same slot is refused, naming the process that holds it.
6. **Bounded runs** (``until=``): ``None`` reads forever; ``"now"`` stops at the end of the WAL as it
   was when the source first started (kept in the position, so a restore stops at the same place); an
   LSN string (``"0/16B3748"``) stops after the transactions that end at or before it.

7. **Initial snapshot** (``snapshot=True``): before any change, the tables' rows as they stood at the
   slot's start are read as ``read`` changes (``before`` ``None``, ``after`` the row, ``lsn`` the
   snapshot's consistent point), table by table in primary-key order. The durable slot is created on a
   replication connection with ``CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`` and the rows are read
   in a ``REPEATABLE READ`` transaction that imports that snapshot, so the snapshot holds exactly the
   transactions that committed before the slot's consistent point and the stream exactly the others:
   no row missed, none twice. The position names the table and the last primary key read.
8. **A restore mid-snapshot** cannot import the old snapshot (an exported snapshot dies with its
   session). The restored reader exports a fresh one (a temporary slot's, at consistent point *L'*)
   and reads the rest of the table from the restored key with it; the position records this as a
   *segment*: rows after that key were read as of *L'*. The rows before the key were read as of an
   older point *L*, so the stream, which still starts at *L* (the durable slot has not moved: nothing
   of the stream was read), must carry every change to them, but a change committed before *L'* to a
   row after the key is already in what was read, and is dropped. Each change of a transaction
   committed before the newest segment's point is kept, dropped or cut to its half that is not yet
   in the rows read (an update moving a row across a segment boundary: ``delete`` of its old key or
   ``insert`` of its new one) by ``fate`` (a pure function). So the rows read and the changes kept
   still apply to exactly the table: every row's state reaches the output once, though the records
   differ from a run without the crash (the rows after the key carry their values as of *L'*, and the
   changes between *L* and *L'* to those rows do not appear). Restarting the snapshot with a new slot
   instead would re-read the rows before the key, which the restored operators already hold: twice.
   A first start that finds the durable slot already there (a job that failed before its first
   checkpoint) is the same case with one segment from the start of the first table.
   Primary keys are compared by the server (``ROW(…) > ROW(…)``), so collations order them as the
   snapshot query did; a table without a primary key cannot be read this way and is refused.

A slot left behind by a job that no longer runs keeps WAL on the server: it is the user's to drop
(``flowstate postgres-slots DSN`` lists the slots, ``--drop NAME`` drops one with its publication).

What the server needs: ``wal_level = logical`` and a free replication slot; for the ``before``
values of updates and deletes, ``ALTER TABLE … REPLICA IDENTITY FULL`` (otherwise ``before`` holds
the key columns only, or nothing).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, assert_never

from flowstate.connectors.cdc_segments import Fate, Segment, fate, segment_point
from flowstate.connectors.pgoutput import (
    POSTGRES_EPOCH,
    Change,
    PgoutputDecoder,
    int_to_lsn,
    lsn_to_int,
)
from flowstate.errors import ConfigError

SPLIT = "slot"
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_FETCH = 2048
"""Default of ``fetch``: changes asked of the server per decoding call (it stops at the end of a
transaction past it), rows per round trip of the snapshot."""



def _one(cursor: Any) -> tuple[Any, ...]:
    """The row of a query that always returns one (``SHOW``, a function, a slot this reader holds)."""
    row = cursor.fetchone()
    assert row is not None, "a query of exactly one row returned none"
    return tuple(row)

class PostgresCdcError(ConfigError):
    """The source cannot read as configured; the message names it and what to change."""


def _lock_key(slot: str) -> int:
    """The advisory lock of a slot: a bigint whose high half is 0 (pg_locks shows it as classid 0)."""
    return zlib.crc32(f"flowstate-cdc:{slot}".encode())


class PostgresCdcSource:
    """Row changes of ``tables`` (see the module rules). Replayable; one split, read by one subtask.

    ``snapshot=True`` reads the tables' rows first (rules 7 and 8); ``fetch`` is the changes asked of
    the server per decoding call and the rows per round trip of the snapshot, and bounds what one poll
    returns (a barrier waits for the poll in progress)."""

    __slots__ = ("_tables", "_dsn", "_slot", "_publication", "_until", "_name", "_snapshot", "_fetch")

    def __init__(
        self,
        tables: Sequence[str],
        dsn: str,
        slot: str,
        *,
        publication: str | None = None,
        until: str | None = None,
        snapshot: bool = False,
        fetch: int = _FETCH,
        name: str | None = None,
    ) -> None:
        tables = tuple(tables)
        if not isinstance(fetch, int) or fetch < 1:
            raise ConfigError(f"PostgresCdcSource: fetch must be a positive number of changes, got {fetch!r}")
        if not tables:
            raise ConfigError("PostgresCdcSource: tables must name at least one table")
        if not _SLOT_NAME.fullmatch(slot):
            raise ConfigError(
                f"PostgresCdcSource: slot must be 1-63 lower-case letters, digits or underscores, got {slot!r}"
            )
        if until is not None and until != "now":
            try:
                lsn_to_int(until)
            except ValueError:
                raise ConfigError(f"PostgresCdcSource: until must be None, 'now' or an LSN like '0/16B3748', got {until!r}") from None
        self._tables = tables
        self._dsn = dsn
        self._slot = slot
        self._publication = publication or f"{slot}_pub"
        self._until = until
        self._snapshot = snapshot
        self._fetch = fetch
        self._name = name or f"postgres-cdc:{slot}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def replayable(self) -> bool:
        return True

    def splits(self) -> list[str]:
        return [SPLIT]

    def build_reader(self, splits: Sequence[str], resume_state: dict[str, Any] | None) -> Any:
        if not splits:
            return _NoSplits()
        return PostgresCdcReader(self, (resume_state or {}).get(SPLIT))


class _NoSplits:
    """A subtask beyond the first: the single split is read elsewhere."""

    def poll(self, max_records: int) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True, slots=True)
class _Table:
    """A table of the source as the snapshot reads it: its qualified name, its primary key's columns
    and their types (as ``format_type`` spells them, for casts)."""

    schema: str
    name: str
    key: tuple[str, ...]
    key_types: tuple[str, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class _Exported:
    """A snapshot exported by a replication connection: valid while ``conn`` runs no other command."""

    conn: Any
    point: int
    name: str


class PostgresCdcReader:
    """Reads the changes through a temporary copy of the durable slot (rules 1-8)."""

    def __init__(self, source: PostgresCdcSource, position: Any | None) -> None:
        import psycopg

        self._source = source
        self._name = source.name
        try:
            self._conn = psycopg.connect(source._dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise PostgresCdcError(f"PostgresCdcSource {self._name!r}: cannot connect: {_first_line(error)}") from None
        self._reader_conn: Any = None
        self._cursor: Any = None
        try:
            self._check_server()
            self._lock()
            exported = self._ensure_slot()
            try:
                self._done, self._skip, self._until, self._segments, self._reading = self._start(position)
                self._info = self._table_info() if source._snapshot or self._segments else []
                if self._reading is not None:
                    # Rule 8: a restore mid-snapshot (or a slot found already made) reads on from a fresh snapshot.
                    if exported is None:
                        exported = self._export(f"{source._slot}_x{self._conn.info.backend_pid}", temporary=True)
                    self._segments = [*self._segments, (*self._reading, exported.point)]
                    self._begin_snapshot(exported)
            finally:
                if exported is not None:
                    exported.conn.close()
            self._temporary = f"{source._slot}_r{self._conn.info.backend_pid}"
            self._conn.execute(
                "SELECT pg_copy_logical_replication_slot(%s, %s, true)", (source._slot, self._temporary)
            )
        except BaseException:
            self.close()
            raise
        self._index = {table.qualified: i for i, table in enumerate(self._info)}
        self._decoder = PgoutputDecoder(self._loader)
        self._buffer: deque[tuple[int, list[Change]]] = deque()
        self._current: tuple[int, list[Change]] | None = None
        self._remembered: dict[int, int] = {}
        self._ended = False

    # ---- set-up ---------------------------------------------------------------------------------

    def _check_server(self) -> None:
        (level,) = _one(self._conn.execute("SHOW wal_level"))
        if level != "logical":
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: the server has wal_level = {level}; reading changes needs "
                "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the server)"
            )
        for table in self._source._tables:
            if _one(self._conn.execute("SELECT to_regclass(%s)", (table,)))[0] is None:
                raise PostgresCdcError(f"PostgresCdcSource {self._name!r}: table {table!r} does not exist")

    def _lock(self) -> None:
        key = _lock_key(self._source._slot)
        (locked,) = _one(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)))
        if not locked:
            holder = self._conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid::text::bigint = 0 AND objid::text::bigint = %s",
                (key,),
            ).fetchone()
            who = f" (server process {holder[0]})" if holder else ""
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: slot {self._source._slot!r} is held by another job{who}; "
                "give each job its own slot"
            )

    def _ensure_slot(self) -> _Exported | None:
        """Rule 1: the publication and the durable slot; when the slot is created now for a snapshot
        (rule 7), the snapshot it exported."""
        source = self._source
        if self._conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (source._publication,)).fetchone() is None:
            tables = ", ".join(source._tables)
            self._conn.execute(f'CREATE PUBLICATION "{source._publication}" FOR TABLE {tables}')
        found = self._conn.execute(
            "SELECT plugin, slot_type FROM pg_replication_slots WHERE slot_name = %s", (source._slot,)
        ).fetchone()
        if found is not None:
            if found != ("pgoutput", "logical"):
                raise PostgresCdcError(
                    f"PostgresCdcSource {self._name!r}: slot {source._slot!r} exists but is a {found[1]} slot "
                    f"of plugin {found[0]!r}; give the source another slot name"
                )
            return None
        if source._snapshot:
            return self._export(source._slot, temporary=False)
        try:
            self._conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (source._slot,))
        except Exception as error:
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: cannot create slot {source._slot!r}: {_first_line(error)}"
            ) from None
        return None

    def _export(self, slot: str, *, temporary: bool) -> _Exported:
        """Create ``slot`` on a replication connection, exporting the snapshot of its consistent point
        (rules 7 and 8). The caller imports it, then closes the connection (a temporary slot goes
        with it)."""
        import psycopg

        try:
            conn = psycopg.connect(self._source._dsn, replication="database", autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: the initial snapshot needs a replication connection (a role "
                f"with REPLICATION, allowed by pg_hba.conf), which failed: {_first_line(error)}"
            ) from None
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        result = conn.pgconn.exec_(f"CREATE_REPLICATION_SLOT {slot} {kind} pgoutput (SNAPSHOT 'export')".encode())
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            message = (result.error_message or b"").decode(errors="replace").strip().splitlines()[:1]
            conn.close()
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: cannot create slot {slot!r}: {' '.join(message)}"
            )
        point, name = ((result.get_value(0, column) or b"").decode() for column in (1, 2))
        return _Exported(conn, lsn_to_int(point), name)

    def _table_info(self) -> list[_Table]:
        """Rule 8 needs each table's primary key; a table without one is refused."""
        out = []
        for table in self._source._tables:
            schema, name = _one(self._conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = %s::regclass", (table,),
            ))
            rows = self._conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
                "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.ord", (table,),
            ).fetchall()
            if not rows:
                raise PostgresCdcError(
                    f"PostgresCdcSource {self._name!r}: table {table!r} has no primary key, which the initial "
                    "snapshot reads it by; add one or leave snapshot off"
                )
            out.append(_Table(schema, name, tuple(r[0] for r in rows), tuple(r[1] for r in rows)))
        return out

    def _begin_snapshot(self, exported: _Exported) -> None:
        """Import the exported snapshot into a ``REPEATABLE READ`` transaction of a connection of its own."""
        import psycopg
        from psycopg import sql

        conn = self._reader_conn = psycopg.connect(self._source._dsn, connect_timeout=10)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported.name)))
        (self._read_time,) = _one(conn.execute("SELECT now()"))

    def _start(self, position: Any | None) -> tuple[int, int, int | None, list[Segment], tuple[int, Any] | None]:
        """Rules 3, 6, 7 and 8: (end LSN read whole, changes to skip of the next transaction, stop LSN,
        the snapshot segments, the snapshot's next row: ``(table index, last key read)`` or ``None``
        once the snapshot is read)."""
        (confirmed,) = _one(self._conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (self._source._slot,)
        ))
        confirmed_lsn = lsn_to_int(confirmed)
        if position is None:
            until = self._source._until
            if until == "now":
                (now,) = _one(self._conn.execute("SELECT pg_current_wal_lsn()::text"))
                stop: int | None = lsn_to_int(now)
            else:
                stop = None if until is None else lsn_to_int(until)
            return confirmed_lsn, 0, stop, [], ((0, None) if self._source._snapshot else None)
        try:
            done, skip, stop = int(position["done"]), int(position["skip"]), position["until"]
            segments = [tuple(segment) for segment in position.get("segments", ())]
            reading = position.get("reading")
            reading = None if reading is None else tuple(reading)
        except (TypeError, KeyError, ValueError, AttributeError):
            raise ValueError(f"PostgresCdcSource {self._name!r}: not a position of this source: {position!r}") from None
        if done < confirmed_lsn:
            raise PostgresCdcError(
                f"PostgresCdcSource {self._name!r}: the restored position {int_to_lsn(done)} is older than slot "
                f"{self._source._slot!r} ({confirmed}), which a newer completed checkpoint advanced; the changes "
                "in between are gone. Restore the newest checkpoint"
            )
        return done, skip, stop, segments, reading  # type: ignore[return-value]

    # ---- the reader port --------------------------------------------------------------------------

    def poll(self, max_records: int) -> list[Change] | None:
        max_records = min(max_records, self._source._fetch)  # barriers pass between two polls
        if self._ended:
            return None
        if self._reading is not None:
            return self._read_rows(max_records)
        if self._current is None and not self._buffer:
            # Read the flush position first: every transaction committed before it is decodable now.
            flushed = self._flushed() if self._until is not None else 0
            decoded = self._fetch()
            if not self._buffer:
                # Only a call that decoded nothing is the end: after a restore, a call may decode only
                # transactions read before the restored position.
                if self._until is not None and not decoded and (self._done >= self._until or flushed >= self._until):
                    self._ended = True
                    return None
                return []
        out: list[Change] = []
        while len(out) < max_records:
            if self._current is None:
                if not self._buffer:
                    break
                self._current = self._buffer.popleft()
            end, changes = self._current
            take = changes[self._skip:self._skip + max_records - len(out)]
            out.extend(take)
            self._skip += len(take)
            if self._skip >= len(changes):
                self._done, self._skip, self._current = end, 0, None
                if self._segments and self._done >= self._segments[-1][2]:
                    self._segments = []  # every change from here on committed after every segment's point
        return out

    def snapshot(self) -> dict[str, Any]:
        return {SPLIT: {"done": self._done, "skip": self._skip, "until": self._until,
                        "segments": list(self._segments), "reading": self._reading}}

    def snapshot_for(self, checkpoint_id: int) -> dict[str, Any]:
        self._remembered[checkpoint_id] = self._done
        return self.snapshot()

    def notify_complete(self, checkpoint_id: int) -> None:
        covered = [cid for cid in self._remembered if cid <= checkpoint_id]
        if not covered:
            return
        target = max(self._remembered[cid] for cid in covered)
        for cid in covered:
            del self._remembered[cid]
        (confirmed,) = _one(self._conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (self._source._slot,)
        ))
        if target > lsn_to_int(confirmed):
            self._conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self._source._slot, int_to_lsn(target)))

    def notify_aborted(self, checkpoint_id: int) -> None:
        pass  # what it remembered is advanced with the next checkpoint that completes

    def close(self) -> None:
        if self._reader_conn is not None:
            self._reader_conn.close()
        try:
            # Released now, not when the server notices the session ended: a restart right after this
            # close must find the slot free.
            self._conn.execute("SELECT pg_advisory_unlock_all()")
        except Exception:  # noqa: BLE001 - a broken session: its end releases the lock
            pass
        self._conn.close()  # ends the session: the temporary slot goes with it

    # ---- the initial snapshot (rules 7 and 8) ---------------------------------------------------------

    def _read_rows(self, max_records: int) -> list[Change]:
        from psycopg import sql
        from psycopg.rows import dict_row

        out: list[Change] = []
        point = int_to_lsn(self._segments[-1][2])
        while self._reading is not None and len(out) < max_records:
            index, last = self._reading
            table = self._info[index]
            if self._cursor is None:
                columns = sql.SQL(", ").join(map(sql.Identifier, table.key))
                query = sql.SQL("SELECT * FROM {} ").format(sql.Identifier(table.schema, table.name))
                if last is not None:
                    query += sql.SQL("WHERE ({}) > ({}) ").format(columns, sql.SQL(", ").join(
                        sql.SQL("{}::" + kind).format(sql.Literal(value)) for value, kind in zip(last, table.key_types)))
                self._cursor = self._reader_conn.cursor(name=f"flowstate_snapshot_{index}", row_factory=dict_row)
                self._cursor.execute(query + sql.SQL("ORDER BY {}").format(columns))
            wanted = max_records - len(out)
            rows = self._cursor.fetchmany(wanted)
            for row in rows:
                out.append(Change("read", table.qualified, None, row, point, self._read_time))
            if rows:
                self._reading = (index, tuple(rows[-1][c] for c in table.key))
            if len(rows) < wanted:  # the table is read whole
                self._cursor.close()
                self._cursor = None
                self._reading = (index + 1, None) if index + 1 < len(self._info) else None
        if self._reading is None:
            self._reader_conn.close()
            self._reader_conn = None
        return out

    def _greater(self, index: int, key: tuple[Any, ...], bound: tuple[Any, ...]) -> bool:
        """Whether ``key`` comes after ``bound`` in table ``index``'s primary-key order, as the server
        orders them (collations included)."""
        from psycopg import sql

        kinds = self._info[index].key_types
        def row(values: tuple[Any, ...]) -> sql.Composable:
            return sql.SQL("ROW({})").format(sql.SQL(", ").join(
                sql.SQL("{}::" + kind).format(sql.Literal(value)) for value, kind in zip(values, kinds)))
        (greater,) = _one(self._conn.execute(sql.SQL("SELECT {} > {}").format(row(key), row(bound))))
        return bool(greater)

    def _deduplicate(self, changes: list[Change], commit: int) -> list[Change]:
        """Rule 8: each change of a transaction committed at ``commit`` kept, dropped or cut by ``fate``."""
        out: list[Change] = []
        for change in changes:
            index = self._index.get(change.table)
            if index is None:
                out.append(change)
                continue
            key = self._info[index].key
            new = None if change.after is None else tuple(change.after.get(c) for c in key)
            old = None if change.before is None else tuple(change.before.get(c) for c in key)
            if change.op == "update" and old is None:
                old = new  # the key did not change (REPLICA IDENTITY DEFAULT sends no old row then)
            if change.op == "delete" and old is None:
                out.append(change)  # REPLICA IDENTITY NOTHING: no key to place it by
                continue
            def point(row: tuple[Any, ...] | None) -> int | None:
                return None if row is None else segment_point(self._segments, index, row, self._greater)  # noqa: B023 - called in this iteration
            match fate(change.op, commit, point(old), point(new)):
                case Fate.KEEP:
                    out.append(change)
                case Fate.DROP:
                    pass
                case Fate.AS_DELETE:
                    out.append(dataclasses.replace(change, op="delete", after=None))
                case Fate.AS_INSERT:
                    out.append(dataclasses.replace(change, op="insert", before=None))
                case unknown:
                    assert_never(unknown)
        return out

    # ---- decoding ---------------------------------------------------------------------------------

    def _flushed(self) -> int:
        (flushed,) = _one(self._conn.execute("SELECT pg_current_wal_flush_lsn()::text"))
        return lsn_to_int(flushed)

    def _fetch(self) -> bool:
        """Decode whole transactions from the temporary slot into the buffer (rules 2 and 3); whether
        the server had any to decode."""
        upto = None if self._until is None else int_to_lsn(self._until)
        rows = self._conn.execute(
            "SELECT data FROM pg_logical_slot_get_binary_changes(%s, %s::pg_lsn, %s, "
            "'proto_version', '1', 'publication_names', %s)",
            (self._temporary, upto, self._source._fetch, self._source._publication),
        ).fetchall()
        transaction: list[Change] = []
        commit_lsn, commit_time, commit = "0/0", POSTGRES_EPOCH, 0
        for (data,) in rows:
            kind = data[:1]
            if kind == b"B":
                final, micros, _ = struct.unpack_from("!QqI", data, 1)
                commit = final
                commit_lsn, commit_time = int_to_lsn(final), POSTGRES_EPOCH + _dt.timedelta(microseconds=micros)
                transaction = []
            elif kind == b"C":
                _, _, end, _ = struct.unpack_from("!BQQq", data, 1)
                if end > self._done:
                    if self._segments and commit < self._segments[-1][2]:
                        transaction = self._deduplicate(transaction, commit)
                    # Empty transactions too (changes of other tables): reading past them moves the position.
                    self._buffer.append((end, transaction))
                transaction = []
            elif kind == b"R":
                self._decoder.relation(data)
            elif kind in (b"I", b"U", b"D"):
                transaction.append(self._decoder.change(kind, data, commit_lsn, commit_time))
            # 'O' origin, 'Y' type, 'T' truncate, 'M' message: nothing a change record carries
        return bool(rows)

    def _loader(self, type_oid: int) -> Callable[[bytes], Any]:
        """psycopg's loader of a column type's text form (text when it has none)."""
        from psycopg.pq import Format

        cls = self._conn.adapters.get_loader(type_oid, Format.TEXT)
        return cls(type_oid, self._conn).load if cls is not None else bytes.decode


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
