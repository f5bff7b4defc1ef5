"""``PostgresSink``: rows into a PostgreSQL table, exactly-once under the job's checkpoints.

Design: **one transaction per checkpoint with a commit marker** (the records of a checkpoint are
kept in the sink's pre-committed state until it completes). Chosen over two-phase commit with
``PREPARE TRANSACTION`` because

- it needs no server setting (``max_prepared_transactions`` is 0 on a default server);
- a prepared transaction keeps its row locks until ``COMMIT PREPARED``: in ``upsert`` mode the rows of
  the next checkpoint that touch the same keys would wait on them, on the very task thread that must
  later commit them;
- a re-commit is decided by a row in the database, not by the absence of a prepared transaction
  (which cannot tell "committed" from "lost").
The price: a checkpoint holds the rows written since the previous barrier (compressed like all state).

Rules, per writer (one per subtask):

1. ``write_batch``: each record is mapped to a row of ``columns`` (tuple/list by position, dict and
   dataclass by name, or through ``row=``) and checked against the column types read from the
   table; a record that does not fit raises at once, naming the sink, the column and the record.
   Rows are kept in memory.
2. ``pre_commit(n)``: the rows since the previous barrier become the committable of *n*, tagged with
   this writer's *origin* subtask index; they are part of the snapshot.
3. ``commit(n)``: for every committable with an id ≤ *n*, one transaction: lock the marker row
   ``(sink, origin)`` of ``flowstate_sink_commits``; if it already records the committable's
   *lineage* at a checkpoint ≥ the committable's, skip (a re-commit after a restore); otherwise COPY
   the rows (for ``upsert``: into a staging table, then ``INSERT … ON CONFLICT (key) DO UPDATE``) and
   set the marker; COMMIT. Rows and marker become visible together or not at all.
4. Restore from a snapshot: commit what it names (step 3, idempotent). A *lineage* (a random id made
   by each fresh writer, kept in its snapshots and carried by each committable) tells this run's
   checkpoints from an earlier run's, whose ids started at 1 too. Rescaling hands every committable
   to exactly one new writer; it keeps its origin and lineage, so its marker decides as before.
5. Committed output is never mixed with another run's: a writer built **without** a snapshot refuses
   when the marker table already holds commits of this sink (an earlier run committed rows: a fresh
   start would write them again); a restored writer refuses when a marker of its lineage is newer
   than the checkpoint it restores (the restore would fall back past committed output). ``upsert``
   mode is exempt from both: writing a row again leaves the same table.

``delivery="at_least_once"`` writes at every barrier and whenever 100,000 rows are buffered, each time
one COPY in its own transaction, with no marker and nothing in the checkpoint: cheaper, and after a
restore the rows written since the restored checkpoint are written again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import os
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from flowstate import failpoints as fpn
from flowstate.checkpoint.commit import CommitLog
from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import CommittedOutput
from flowstate.errors import ConfigError

MARKER_TABLE = "flowstate_sink_commits"
_MODES = ("insert", "upsert")
_DELIVERIES = ("exactly_once", "at_least_once")
_AT_LEAST_ONCE_FLUSH = 100_000
"""At-least-once: rows buffered before a COPY, besides the one at every barrier."""
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")

# PostgreSQL data type (information_schema.columns.data_type) -> Python types a value may have.
_NUMBER = (int, float, decimal.Decimal)
_TYPES: dict[str, tuple[type, ...]] = {
    "smallint": (int,), "integer": (int,), "bigint": (int,),
    "numeric": _NUMBER, "real": _NUMBER, "double precision": _NUMBER,
    "text": (str,), "character varying": (str,), "character": (str,), "name": (str,), "citext": (str,),
    "boolean": (bool,), "bytea": (bytes, bytearray, memoryview),
    "date": (_dt.date,), "timestamp without time zone": (_dt.datetime,),
    "timestamp with time zone": (_dt.datetime,), "time without time zone": (_dt.time,),
    "uuid": (uuid.UUID, str),
}


Committable = tuple[int, str, list[tuple[Any, ...]]]
"""The rows one writer wrote between two barriers: (origin subtask, the origin's lineage, rows)."""


class PostgresSinkError(ConfigError):
    """The sink cannot write as configured; the message names the sink and what to change."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Column:
    name: str
    data_type: str
    nullable: bool

    @property
    def fast_types(self) -> frozenset[type] | None:
        """Exact types accepted without a closer look (None: the column takes anything)."""
        accepted = _TYPES.get(self.data_type)
        if accepted is None:
            return None
        exact = {t for t in accepted if t is not bool or bool in accepted}
        if self.nullable:
            exact.add(type(None))
        return frozenset(exact)

    def check(self, value: Any) -> str | None:
        """Why ``value`` cannot go into this column, or None when it can."""
        if value is None:
            return None if self.nullable else "NULL into a NOT NULL column"
        accepted = _TYPES.get(self.data_type)
        if accepted is None:
            return None  # json, arrays, enums…: left to the server
        if isinstance(value, bool) and bool not in accepted:
            return f"a bool into a {self.data_type} column"
        if not isinstance(value, accepted):
            return f"a {type(value).__name__} into a {self.data_type} column"
        return None


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _qualified(table: str) -> str:
    return ".".join(_quote(part) for part in table.split("."))


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn))


class PostgresSink:
    """Rows into ``table`` (see the module rules). ``mode="upsert"`` needs ``key`` (the columns of a
    unique constraint); ``columns`` defaults to every column of the table in order."""

    __slots__ = ("_table", "_dsn", "_mode", "_key", "_columns", "_row", "_delivery", "_name")

    def __init__(
        self,
        table: str,
        dsn: str,
        *,
        mode: str = "insert",
        key: Sequence[str] = (),
        columns: Sequence[str] | None = None,
        row: Callable[[Any], Any] | None = None,
        delivery: str = "exactly_once",
        name: str | None = None,
    ) -> None:
        if not all(_IDENT.fullmatch(part) for part in table.split(".")):
            raise ConfigError(f"PostgresSink: table must be a name like 'events' or 'schema.events', got {table!r}")
        if mode not in _MODES:
            raise ConfigError(f"PostgresSink {table!r}: mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if delivery not in _DELIVERIES:
            raise ConfigError(
                f"PostgresSink {table!r}: delivery must be one of {', '.join(_DELIVERIES)}, got {delivery!r}"
            )
        key = tuple(key)
        if mode == "upsert" and not key:
            raise ConfigError(f"PostgresSink {table!r}: mode='upsert' needs key=[...] (the columns of a unique key)")
        if columns is not None:
            columns = tuple(columns)
            if not columns:
                raise ConfigError(f"PostgresSink {table!r}: columns must name at least one column")
            missing = [k for k in key if k not in columns]
            if missing:
                raise ConfigError(f"PostgresSink {table!r}: key column(s) {missing} are not among columns {list(columns)}")
        if row is not None and not callable(row):
            raise ConfigError(f"PostgresSink {table!r}: row must be callable (record -> tuple or dict), got {row!r}")
        self._table = table
        self._dsn = dsn
        self._mode = mode
        self._key = key
        self._columns = columns
        self._row = row
        self._delivery = delivery
        self._name = name or f"postgres-sink:{table}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return self._delivery == "exactly_once"

    def committed_output(self) -> CommittedOutput | tuple[()]:
        """What the restore planner weighs before a start from scratch (rule 5, checked before any
        checkpoint is discarded): the commit markers of this sink in ``insert`` mode, one per subtask
        that committed. Empty in ``upsert`` mode (writing the rows again leaves the same table), for
        at-least-once delivery (no markers) and when the server cannot be asked (the writer then
        fails with the reason)."""
        if self._mode != "insert" or self._delivery != "exactly_once":
            return ()
        import psycopg

        try:
            with psycopg.connect(self._dsn, connect_timeout=10) as conn:
                row = conn.execute("SELECT to_regclass(%s)", (MARKER_TABLE,)).fetchone()
                if row is None or row[0] is None:
                    return ()
                markers = conn.execute(
                    f"SELECT subtask, checkpoint, committed_at FROM {MARKER_TABLE} WHERE sink = %s ORDER BY subtask",
                    (self._name,),
                ).fetchall()
        except psycopg.Error:
            return ()
        if not markers:
            return ()
        return CommittedOutput(
            self._name, f"table {self._table}",
            tuple(f"checkpoint {c} of subtask {s} at {t:%Y-%m-%d %H:%M:%S}" for s, c, t in markers), unit="commit marker",
            clear=(f"delete the rows of table {self._table} written by sink {self._name!r} and run "
                   f"DELETE FROM {MARKER_TABLE} WHERE sink = '{self._name}', or give the sink another table"),
        )

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> PostgresSinkWriter:
        if not 0 <= subtask < parallelism:
            raise ValueError(f"PostgresSink {self._name!r}: subtask {subtask} outside 0..{parallelism - 1}")
        return PostgresSinkWriter(self, subtask, resume_state)

    def redistribute_state(self, states: Sequence[Any | None], parallelism: int) -> list[dict[str, Any]]:
        """Rescaling: every pending committable goes to exactly one new writer (old *j*'s to new
        ``j % p``); it keeps its origin, so its marker row decides its re-commit as before."""
        if parallelism < 1:
            raise ValueError(f"PostgresSink {self._name!r}: parallelism must be ≥ 1, got {parallelism}")
        parsed = {j: _parse_snapshot(self._name, s) for j, s in enumerate(states) if s is not None}
        checkpoint = max((c for _, c, _ in parsed.values()), default=0)
        pending: list[list[tuple[int, Committable]]] = [[] for _ in range(parallelism)]
        for j, (_, _, entries) in parsed.items():
            pending[j % parallelism].extend(entries)
        return [
            {
                "lineage": parsed[i][0] if i in parsed else uuid.uuid4().hex,
                "checkpoint": checkpoint,
                "pending": sorted(pending[i], key=lambda e: e[0]),
            }
            for i in range(parallelism)
        ]


class PostgresSinkWriter:
    """One subtask's connection and pending rows."""

    def __init__(self, sink: PostgresSink, subtask: int, resume_state: Any | None) -> None:
        import psycopg  # the optional dependency, imported where it is needed

        self._sink = sink
        self._name = sink.name
        self._subtask = subtask
        self._failpoints: Any = None
        self._rows: list[tuple[Any, ...]] = []
        self._log: CommitLog[Committable] = CommitLog()
        try:
            self._conn = psycopg.connect(sink._dsn, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise PostgresSinkError(
                f"PostgresSink {self._name!r}: cannot connect to {_safe_dsn(sink._dsn)}: {first}"
            ) from None
        try:
            self._columns = self._read_columns()
            self._names = tuple(c.name for c in self._columns)
            self._json = tuple(i for i, c in enumerate(self._columns) if c.data_type in ("json", "jsonb"))
            self._fast = tuple(c.fast_types for c in self._columns)
            self._insert_sql, self._stage_sql = self._statements()
            if sink._delivery == "exactly_once":
                self._ensure_marker_table()
                self._lineage, to_commit = self._start(resume_state)
                for cid, committable in to_commit:
                    self._write_committable(cid, committable)
        except BaseException:
            self._conn.close()
            raise

    # ---- set-up ---------------------------------------------------------------------------------

    def _read_columns(self) -> tuple[_Column, ...]:
        sink = self._sink
        schema, _, table = sink._table.rpartition(".")
        found = self._conn.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = COALESCE(NULLIF(%s, ''), current_schema()) "
            "AND is_generated = 'NEVER' ORDER BY ordinal_position",
            (table, schema),
        ).fetchall()
        if not found:
            raise PostgresSinkError(
                f"PostgresSink {self._name!r}: table {sink._table!r} does not exist in {_safe_dsn(sink._dsn)}; "
                "create it first"
            )
        by_name = {name: _Column(name, data_type, nullable) for name, data_type, nullable in found}
        wanted = sink._columns if sink._columns is not None else tuple(by_name)
        unknown = [c for c in (*wanted, *sink._key) if c not in by_name]
        if unknown:
            raise PostgresSinkError(
                f"PostgresSink {self._name!r}: table {sink._table!r} has no column(s) {unknown}; "
                f"its columns are {list(by_name)}"
            )
        return tuple(by_name[c] for c in wanted)

    def _statements(self) -> tuple[str, str | None]:
        sink = self._sink
        cols = ", ".join(map(_quote, self._names))
        if sink._mode == "insert":
            return f"COPY {_qualified(sink._table)} ({cols}) FROM STDIN", None
        stage = "_flowstate_stage"
        self._conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT {cols} FROM {_qualified(sink._table)} WITH NO DATA"
        )
        updates = [c for c in self._names if c not in sink._key]
        action = (
            "DO UPDATE SET " + ", ".join(f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in updates)
            if updates else "DO NOTHING"
        )
        merge = (
            f"INSERT INTO {_qualified(sink._table)} ({cols}) SELECT {cols} FROM {stage} "
            f"ON CONFLICT ({', '.join(map(_quote, sink._key))}) {action}"
        )
        return f"COPY {stage} ({cols}) FROM STDIN", merge

    def _ensure_marker_table(self) -> None:
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} ("
            "sink text NOT NULL, subtask integer NOT NULL, lineage text NOT NULL, "
            "checkpoint bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (sink, subtask))"
        )

    def _start(self, resume_state: Any | None) -> tuple[str, list[tuple[int, Committable]]]:
        """Rules 4 and 5: the lineage, what to commit first, and the refusals."""
        sink = self._sink
        markers = self._conn.execute(
            f"SELECT subtask, lineage, checkpoint, committed_at FROM {MARKER_TABLE} WHERE sink = %s ORDER BY subtask",
            (self._name,),
        ).fetchall()
        if resume_state is None:
            if markers and sink._mode == "insert":
                newest = max(markers, key=lambda m: m[3])
                raise PostgresSinkError(
                    f"PostgresSink {self._name!r}: table {sink._table!r} already holds rows committed by an earlier run "
                    f"of this sink (checkpoint {newest[2]} at {newest[3]:%Y-%m-%d %H:%M:%S}); starting without a "
                    "checkpoint would write them again. Restore the job from its checkpoints, or delete those rows "
                    f"and run: DELETE FROM {MARKER_TABLE} WHERE sink = '{self._name}'"
                )
            return uuid.uuid4().hex, []
        lineage, restored, pending = _parse_snapshot(self._name, resume_state)
        if sink._mode == "insert":
            for subtask, marked_lineage, checkpoint, _ in markers:
                if marked_lineage == lineage and checkpoint > restored:
                    raise PostgresSinkError(
                        f"PostgresSink {self._name!r}: table {sink._table!r} holds rows of checkpoint {checkpoint} "
                        f"(subtask {subtask}), newer than checkpoint {restored} being restored; the replay would "
                        "write them again. Restore the newest checkpoint, or delete the rows of the newer "
                        "checkpoints first"
                    )
        return lineage, pending

    # ---- the writer port -------------------------------------------------------------------------

    def attach_failpoints(self, failpoints: Any) -> None:
        self._failpoints = failpoints

    def write_batch(self, records: list[Any]) -> None:
        if not records:
            return
        self._rows.extend(self._to_rows(records))
        if self._sink._delivery == "at_least_once" and len(self._rows) >= _AT_LEAST_ONCE_FLUSH:
            self._flush()

    def _flush(self) -> None:
        """At-least-once: write what is buffered, visible at once."""
        rows, self._rows = self._rows, []
        self._write_transaction(rows, marker=None)

    def pre_commit(self, checkpoint_id: int) -> None:
        if self._sink._delivery == "at_least_once":
            self._flush()  # the rows before the barrier: a restore from this checkpoint does not replay them
            return
        committables = [(self._subtask, self._lineage, self._rows)] if self._rows else []
        log = self._log.pre_commit(CheckpointId(checkpoint_id), committables)
        if self._failpoints and committables:
            self._failpoints.hit(fpn.SINK_MID_PRE_COMMIT)
        self._log = log
        self._rows = []

    def snapshot(self) -> dict[str, Any] | None:
        if self._sink._delivery == "at_least_once":
            return None
        return {"lineage": self._lineage, "checkpoint": self._log.last, "pending": self._log.snapshot()}

    def commit(self, checkpoint_id: int) -> None:
        log, _ = self._log.complete(CheckpointId(checkpoint_id))
        for cid, committable in self._log.pending:
            if cid <= checkpoint_id:
                self._write_committable(cid, committable)
        self._log = log

    def finish(self) -> None:
        if self._sink._delivery == "at_least_once":
            self._flush()
            return
        if self._rows:
            self.pre_commit(self._log.last + 1)
        if self._log.pending:
            self.commit(self._log.pending[-1][0])

    def close(self) -> None:
        self._conn.close()

    # ---- committing ------------------------------------------------------------------------------

    def _write_committable(self, cid: int, committable: Committable) -> None:
        """Step 3 for one committable, pre-committed under ``cid``."""
        origin, lineage, rows = committable
        self._write_transaction(rows, marker=(origin, lineage, int(cid)))

    def _write_transaction(self, rows: list[tuple[Any, ...]], marker: tuple[int, str, int] | None) -> None:
        fp = self._failpoints
        with self._conn.transaction():
            if marker is not None:
                origin, lineage, cid = marker
                found = self._conn.execute(
                    f"SELECT lineage, checkpoint FROM {MARKER_TABLE} WHERE sink = %s AND subtask = %s FOR UPDATE",
                    (self._name, origin),
                ).fetchone()
                if found is not None and found[0] == lineage and found[1] >= cid:
                    return  # committed before: a re-commit after a restore is a no-op
            self._copy(rows)
            if fp:
                fp.hit(fpn.SINK_MID_COMMIT)
            if marker is not None:
                self._conn.execute(
                    f"INSERT INTO {MARKER_TABLE} (sink, subtask, lineage, checkpoint) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (sink, subtask) DO UPDATE SET lineage = EXCLUDED.lineage, "
                    "checkpoint = EXCLUDED.checkpoint, committed_at = now()",
                    (self._name, origin, lineage, cid),
                )

    def _copy(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._stage_sql is not None:
            rows = _last_per_key(rows, [self._names.index(k) for k in self._sink._key])
        if self._json:
            from psycopg.types.json import Jsonb

            rows = [_wrap(row, self._json, Jsonb) for row in rows]
        with self._conn.cursor() as cursor:
            with cursor.copy(self._insert_sql) as copy:
                for row in rows:
                    copy.write_row(row)
            if self._stage_sql is not None:
                cursor.execute(self._stage_sql)
                cursor.execute("TRUNCATE _flowstate_stage")

    # ---- records -> rows -------------------------------------------------------------------------

    def _to_rows(self, records: list[Any]) -> list[tuple[Any, ...]]:
        """Rule 1 for a batch. Fast path: tuples of the right length whose values have exactly the
        accepted types, checked a column at a time; anything else goes record by record."""
        values = list(map(self._sink._row, records)) if self._sink._row is not None else records
        if {type(v) for v in values} == {tuple} and set(map(len, values)) == {len(self._names)}:
            rows = values
            for column, fast, items in zip(self._columns, self._fast, zip(*rows)):
                if fast is not None and not set(map(type, items)) <= fast:
                    for row, item in zip(rows, items):
                        problem = column.check(item)
                        if problem is not None:
                            raise self._misfit(records[rows.index(row)], column.name, f"would put {problem}")
            return rows
        return [self._to_row(record, value) for record, value in zip(records, values)]

    def _to_row(self, record: Any, value: Any) -> tuple[Any, ...]:
        columns = self._columns
        if isinstance(value, (tuple, list)):
            if len(value) != len(columns):
                raise self._misfit(record, None, f"has {len(value)} fields for {len(columns)} columns {list(self._names)}")
            row = tuple(value)
        elif isinstance(value, dict):
            missing = [c for c in self._names if c not in value]
            if missing:
                raise self._misfit(record, missing[0], "has no value for it")
            if self._sink._columns is None:
                extra = [k for k in value if k not in self._names]
                if extra:
                    raise self._misfit(record, None, f"has key {extra[0]!r}, which is not a column of the table")
            row = tuple(value[c] for c in self._names)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            try:
                row = tuple(getattr(value, c) for c in self._names)
            except AttributeError as error:
                raise self._misfit(record, error.name, "has no such field") from None
        else:
            raise self._misfit(record, None, "is not a tuple, list, dict or dataclass (pass row= to map it)")
        for column, item in zip(columns, row):
            problem = column.check(item)
            if problem is not None:
                raise self._misfit(record, column.name, f"would put {problem}")
        return row

    def _misfit(self, record: Any, column: str | None, what: str) -> PostgresSinkError:
        shown = repr(record)
        if len(shown) > 200:
            shown = shown[:200] + "…"
        where = f"column {column!r}: " if column is not None else ""
        return PostgresSinkError(f"PostgresSink {self._name!r}: {where}record {shown} {what}")


def _wrap(row: tuple[Any, ...], indices: tuple[int, ...], wrapper: Callable[[Any], Any]) -> tuple[Any, ...]:
    """``row`` with the values at ``indices`` (json/jsonb columns) wrapped for the driver."""
    items = list(row)
    for i in indices:
        if items[i] is not None:
            items[i] = wrapper(items[i])
    return tuple(items)


def _last_per_key(rows: list[tuple[Any, ...]], key: list[int]) -> list[tuple[Any, ...]]:
    """Upsert: one row per key, the last one written (a statement may not change a row twice)."""
    last: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        last[tuple(row[i] for i in key)] = row
    return list(last.values())


def _parse_snapshot(name: str, state: Any) -> tuple[str, int, list[tuple[int, Committable]]]:
    """(this writer's lineage, the checkpoint the snapshot belongs to, pending committables)."""
    try:
        lineage = str(state["lineage"])
        checkpoint = int(state["checkpoint"])
        pending = [
            (int(cid), (int(origin), str(line), list(rows))) for cid, (origin, line, rows) in state["pending"]
        ]
    except (TypeError, KeyError, ValueError) as error:
        raise ValueError(f"PostgresSink {name!r}: not a PostgresSink snapshot: {state!r}") from error
    return lineage, checkpoint, pending


def dsn_from_env(default: str = "postgresql://postgres@127.0.0.1:5432/postgres") -> str:
    """The DSN tests and examples use: ``FLOWSTATE_POSTGRES_DSN`` or the local server."""
    return os.environ.get("FLOWSTATE_POSTGRES_DSN", default)
