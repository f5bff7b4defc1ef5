"""The initial snapshot of ``PostgresCdcSource(snapshot=True)``: the rows a table holds when the slot is
made, then every change after them, against the real PostgreSQL server. The oracle applies the
records strictly (a row read or inserted twice, or a delete or update of a row it does not hold,
fails) and compares the result with the table's final contents; the segment rules of a restore
mid-snapshot are checked as a pure table first.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors.cdc_segments import Fate, fate, segment_point
from flowstate.connectors.pgoutput import Change
from flowstate.connectors.postgres_cdc import PostgresCdcError, PostgresCdcSource
from flowstate.testing.conformance import SOURCE_CHECKS, SourceCase

from tests.connectors.test_postgres_cdc import (  # noqa: F401
    DSN,
    Names,
    Plain,
    execute,
    logical_server,
    names,
    psycopg,
    table_rows,
)
from tests.engine.jobs import FAST_RESTART

# ---- the pure rules -------------------------------------------------------------------------------

L1, L2 = 100, 200
"""Consistent points of two segments: rows before the restored key read as of L1, after it as of L2."""


@pytest.mark.parametrize(("op", "commit", "before", "after", "expected"), [
    ("insert", 150, None, L1, Fate.KEEP),           # a row of the first segment, inserted after its read
    ("insert", 150, None, L2, Fate.DROP),           # the second segment read it already
    ("insert", 250, None, L2, Fate.KEEP),           # after every segment
    ("delete", 150, L1, None, Fate.KEEP),
    ("delete", 150, L2, None, Fate.DROP),           # the second segment never saw the row
    ("update", 150, L1, L1, Fate.KEEP),
    ("update", 150, L2, L2, Fate.DROP),
    ("update", 150, L1, L2, Fate.AS_DELETE),        # moved to a key the second segment read in its new place
    ("update", 150, L2, L1, Fate.AS_INSERT),        # moved out of the second segment before it was read
    ("update", 250, L2, L1, Fate.KEEP),
])
def test_a_change_committed_between_two_segment_points_applies_only_to_rows_read_before_it(op, commit, before, after, expected):
    assert fate(op, commit, before, after) is expected


def test_a_row_belongs_to_the_last_segment_starting_before_it():
    segments = [(0, None, 10), (0, (5,), 20), (1, (3,), 30)]
    def greater(table: int, a: tuple, b: tuple) -> bool:
        return a > b
    assert [segment_point(segments, 0, (k,), greater) for k in (1, 5, 6)] == [10, 10, 20]
    assert [segment_point(segments, 1, (k,), greater) for k in (0, 3, 4)] == [20, 20, 30]
    assert segment_point(segments, 2, (0,), greater) == 30


def test_an_unknown_operation_is_a_bug():
    with pytest.raises(ValueError, match="not an operation"):
        fate("truncate", 1, None, None)


# ---- against the server ----------------------------------------------------------------------------

ROWS = 40


class Table:
    """A model of the table rebuilt from records, strictly: every record must fit what it holds."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple] = {}
        self.reads: list[Change] = []

    def apply(self, changes: list[Change]) -> None:
        for change in changes:
            if change.op in ("update", "delete"):
                key = change.before["id"]
                assert key in self.rows, f"{change.op} of a row not held: {change}"
                del self.rows[key]
            if change.op in ("read", "insert", "update"):
                key = change.after["id"]
                assert key not in self.rows, f"{change.op} of a row held already (twice?): {change}"
                self.rows[key] = (key, change.after["name"], change.after["score"])
            if change.op == "read":
                self.reads.append(change)

    def sorted(self) -> list[tuple]:
        return [self.rows[k] for k in sorted(self.rows)]


def follow(reader: Any, model: Table, table: str) -> None:
    """Apply what the reader gives until it has nothing more and the model equals the table (whose
    writes are all made)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = reader.poll(50)
        model.apply(batch)
        if not batch and model.sorted() == table_rows(table):
            return
    assert model.sorted() == table_rows(table)


def fill(table: str, rows: int = ROWS) -> None:
    execute(f"INSERT INTO {table} SELECT i, 'n' || i, i FROM generate_series(0, {rows - 1}) AS i")


def changes_on_both_sides(t: str) -> None:
    """Changes to rows before and after key 20 (the tests stop reading around it), rows moving across
    it both ways, and a transaction touching both sides."""
    execute(f"UPDATE {t} SET name = 'u' WHERE id IN (3, 33)",
            f"DELETE FROM {t} WHERE id IN (4, 34)",
            f"INSERT INTO {t} VALUES (-1, 'new', 0), (100, 'new', 0)",
            f"UPDATE {t} SET id = 200 WHERE id = 5",       # from before the key to after it
            f"UPDATE {t} SET id = -5 WHERE id = 35")       # and back
    execute(f"UPDATE {t} SET score = score + 1 WHERE id IN (6, 36)", f"DELETE FROM {t} WHERE id IN (7, 37)",
            transaction=True)


def test_the_rows_before_the_slot_then_every_change_give_exactly_the_table(names):
    """Changes made while the snapshot is half read touch rows read already and rows not yet read:
    each row is read once as it stood at the slot's start, and the changes after it follow."""
    fill(names.table)
    source = PostgresCdcSource([names.table], DSN, names.slot(), snapshot=True, until=None)
    reader = source.build_reader(source.splits(), None)
    model = Table()
    try:
        first = reader.poll(20)
        assert [c.op for c in first] == ["read"] * 20 and [c.after["id"] for c in first] == list(range(20))
        model.apply(first)
        changes_on_both_sides(names.table)
        follow(reader, model, names.table)
    finally:
        reader.close()
    assert [c.after["id"] for c in model.reads] == list(range(ROWS)), "every row at the slot's start, once"
    assert all((c.after["name"], c.after["score"]) == (f"n{c.after['id']}", c.after["id"]) for c in model.reads), \
        "as it stood then, though changed before it was read"
    assert model.sorted() == table_rows(names.table)


def test_a_restore_mid_snapshot_reads_on_with_a_fresh_snapshot_and_drops_the_changes_it_holds(names):
    """The position of a checkpoint taken mid-snapshot is restored after changes on both sides of its
    key: the rows read before it and what the restored reader gives apply to exactly the table."""
    fill(names.table)
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot, snapshot=True)
    crashed = source.build_reader(source.splits(), None)
    model = Table()
    model.apply(crashed.poll(20))
    position = crashed.snapshot_for(1)
    crashed.poll(5)            # read past the checkpoint, then lost with the crash
    crashed.close()
    changes_on_both_sides(names.table)
    restored = source.build_reader(source.splits(), position)
    try:
        follow(restored, model, names.table)
        execute(f"UPDATE {names.table} SET name = 'late' WHERE id IN (3, 33)")
        follow(restored, model, names.table)
        after = restored.snapshot()["slot"]
    finally:
        restored.close()
    assert position["slot"]["reading"] == (0, (19,))
    assert 0 < len(model.reads) - 20 < ROWS - 20 + 4, "the restored reader read the rest of the table only"
    assert model.sorted() == table_rows(names.table)
    assert after["segments"] == [] and after["reading"] is None, "read past the fresh snapshot's point, it forgets the segments"


def test_a_first_start_that_finds_its_slot_made_reads_a_fresh_snapshot(names):
    """A job that failed before its first checkpoint left the slot: a start without a position reads
    the table as of a fresh snapshot, and the changes before it are not repeated."""
    fill(names.table)
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot, snapshot=True)
    source.build_reader(source.splits(), None).close()
    changes_on_both_sides(names.table)
    reader = source.build_reader(source.splits(), None)
    try:
        records = reader.poll(1000)
        assert [c.op for c in records] == ["read"] * len(records)
        execute(f"INSERT INTO {names.table} VALUES (500, 'late', 1)")
        model = Table()
        model.apply(records)
        follow(reader, model, names.table)
    finally:
        reader.close()
    assert model.sorted() == table_rows(names.table) and 500 in model.rows


def test_a_table_without_a_primary_key_is_refused_for_a_snapshot(names):
    execute(f"CREATE TABLE {names.table}_nokey (a int)")
    try:
        source = PostgresCdcSource([f"{names.table}_nokey"], DSN, names.slot(), snapshot=True)
        with pytest.raises(PostgresCdcError, match="has no primary key, which the initial snapshot reads it by"):
            source.build_reader(source.splits(), None)
    finally:
        execute(f"DROP TABLE {names.table}_nokey")


# ---- end to end ------------------------------------------------------------------------------------

SNAPSHOT_ROWS = 1500
WRITER = r'''
import sys, time, random, psycopg
dsn, table, rows, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(11)
with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(n):
        k = rng.randrange(rows + 100)
        op = rng.random()
        if op < 0.5:
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE "
                         "SET name = EXCLUDED.name, score = EXCLUDED.score", (k, f"v{i}", i))
        elif op < 0.8:
            conn.execute(f"UPDATE {table} SET score = score + 1 WHERE id = %s", (k,))
        else:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (k,))
        if i % 10 == 0:
            time.sleep(0.01)
'''


class Apply(fs.KeyedProcessFunction):
    """The row as it stands after each change: (id, name, score, alive); slow enough that checkpoints
    complete while the snapshot is read."""

    def process(self, change, ctx):
        time.sleep(0.0004)
        if change.op == "delete":
            yield (change.before["id"], None, None, False)
        else:
            after = change.after
            yield (after["id"], after["name"], after["score"], True)


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_job_crashing_mid_snapshot_under_concurrent_writes_copies_the_table_exactly(names, tmp_path, mode):
    """The job fails while it reads the snapshot and another process writes the table; it restores a
    checkpoint taken mid-snapshot (it had read some rows, not all), and its copy ends equal to the
    table."""
    fill(names.table, SNAPSHOT_ROWS)
    slot = names.slot()
    copy = f"{names.table}_copy"
    execute(f"CREATE TABLE {copy} (id int PRIMARY KEY, name text, score numeric, alive boolean NOT NULL)")
    flow = fs.Dataflow("cdc-snapshot-copy")
    (flow.source(PostgresCdcSource([names.table], DSN, slot, snapshot=True), uid="changes")
         .key_by(lambda change: (change.after or change.before)["id"])
         .process(Apply(), uid="apply")
         .sink(fs.PostgresSink(copy, DSN, mode="upsert", key=["id"]), uid="copy"))
    failpoints = fs.Failpoints({"operator.process": "raise@40"})
    control = fs.JobControl()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms", mode=mode),
                recovery=fs.RecoveryOptions(restart=FAST_RESTART),
                execution=fs.ExecutionOptions(executor="threads", batch_size=25),
                failpoints=failpoints,
                control=control,
            )
        except BaseException as error:  # reported below
            outcome["error"] = error

    job = threading.Thread(target=run)
    job.start()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, DSN, names.table, str(SNAPSHOT_ROWS), "300"])
    try:
        assert writer.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while table_rows(copy, "WHERE alive") != table_rows(names.table) and time.monotonic() < deadline:
            assert job.is_alive(), outcome
            time.sleep(0.1)
    finally:
        if job.is_alive():
            control.stop().result(timeout=30)
        job.join(timeout=30)
    result = outcome.get("result")
    assert result is not None, outcome
    assert failpoints.fired("operator.process") == 1 and result.restarts == 1, result
    assert result.restored_from[1] is not None and result.restored_from[1] >= 1, result
    assert 0 < result.records_restored[1] < SNAPSHOT_ROWS, f"the restore was not mid-snapshot: {result}"
    assert table_rows(copy, "WHERE alive") == table_rows(names.table)


# ---- the conformance kit -----------------------------------------------------------------------------


@pytest.mark.parametrize("check", [c for c in SOURCE_CHECKS if c != "acknowledges_only_after_completion"])
def test_the_snapshot_passes_every_source_check(names, check):
    """Each reader set gets a new slot, so each reads a snapshot of its own of the same rows; a restore
    at every cut reads on from a fresh one. (Acknowledging is checked with the changes: a snapshot
    acknowledges nothing.)"""
    fill(names.table, 8)
    made = iter(range(1000))
    current: list[str] = []

    def make_source() -> Plain:
        if current:  # the previous reader set is closed: its slot goes (the server has few)
            execute(f"SELECT pg_drop_replication_slot('{current[-1]}')", f'DROP PUBLICATION "{current[-1]}_pub"')
            names.slots.remove(current[-1])
        current.append(names.slot(f"k{next(made)}"))
        return Plain(PostgresCdcSource([names.table], DSN, current[-1], snapshot=True, until="now", fetch=3))

    expected = [("read", names.table, None, (("id", str(i)), ("name", f"n{i}"), ("score", str(i)))) for i in range(8)]
    SOURCE_CHECKS[check](SourceCase(make_source, expected))
