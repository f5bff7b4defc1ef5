"""``PostgresCdcSource`` against the real PostgreSQL server (``wal_level = logical``, which ``.ci/run``
sets): the changes it reads, the conformance kit, the slot advanced only after completion, refusals,
and a job that copies a table written concurrently by another process into a ``PostgresSink`` under
crashes, ending with the same table.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

import flowstate as fs
from flowstate.connectors.pgoutput import Change, lsn_to_int
from flowstate.connectors.postgres_cdc import PostgresCdcError, PostgresCdcSource
from flowstate.connectors.postgres_slots import drop_slot, list_slots
from flowstate.testing.conformance import SOURCE_CHECKS, SourceCase

from tests.connectors.test_postgres_sink import DSN, psycopg
from tests.engine.jobs import FAST_RESTART


@pytest.fixture(scope="module")
def logical_server() -> str:
    problem = None
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            (level,) = conn.execute("SHOW wal_level").fetchone()
        if level != "logical":
            problem = f"PostgreSQL at {DSN} has wal_level = {level}; these tests need logical"
    except psycopg.OperationalError as error:
        problem = f"PostgreSQL is not reachable at {DSN}: {str(error).strip()}"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (.ci/run must configure it)")
        pytest.skip(problem)
    return DSN


class Names:
    """Unique names for one test; every slot, publication and table made is dropped afterwards."""

    def __init__(self) -> None:
        self.prefix = f"fs_cdc_{uuid.uuid4().hex[:10]}"
        self.table = f"{self.prefix}_t"
        self.slots: list[str] = []

    def slot(self, suffix: str = "s") -> str:
        name = f"{self.prefix}_{suffix}"
        self.slots.append(name)
        return name


@pytest.fixture
def names(logical_server):
    made = Names()
    with psycopg.connect(logical_server, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {made.table} (id int PRIMARY KEY, name text, score numeric)")
        conn.execute(f"ALTER TABLE {made.table} REPLICA IDENTITY FULL")
    yield made
    with psycopg.connect(logical_server, autocommit=True) as conn:
        for slot in made.slots:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            conn.execute(f'DROP PUBLICATION IF EXISTS "{slot}_pub"')
        conn.execute(f"DROP TABLE IF EXISTS {made.table}")
        conn.execute(f"DROP TABLE IF EXISTS {made.table}_copy")


def execute(*statements: str, transaction: bool = False) -> None:
    with psycopg.connect(DSN, autocommit=not transaction) as conn:
        for statement in statements:
            conn.execute(statement)


def plain(change: Change) -> tuple:
    """A change without its LSN and commit time, hashable: what a test can predict."""
    def items(values: dict[str, Any] | None) -> tuple | None:
        return None if values is None else tuple(sorted((k, str(v)) for k, v in values.items()))
    return (change.op, change.table.split(".")[-1], items(change.before), items(change.after))


def drain(reader: Any) -> list[Change]:
    out: list[Change] = []
    for _ in range(500):
        batch = reader.poll(5)
        if batch is None:
            return out
        out += batch
    raise AssertionError("the reader did not end")


# ---- what it reads ---------------------------------------------------------------------------------


def test_inserts_updates_and_deletes_arrive_as_changes_in_commit_order_with_before_and_after(names):
    source = PostgresCdcSource([names.table], DSN, names.slot(), until="now")
    reader = source.build_reader(source.splits(), None)    # creates the slot: changes from here on
    reader.close()
    t = names.table
    execute(f"INSERT INTO {t} VALUES (1, 'a', 1.5), (2, 'b', 2)",
            f"UPDATE {t} SET name = 'c' WHERE id = 1", f"DELETE FROM {t} WHERE id = 2", transaction=True)
    execute(f"INSERT INTO {t} VALUES (3, NULL, NULL)")
    source = PostgresCdcSource([names.table], DSN, names.slot(), until="now")
    reader = source.build_reader(source.splits(), None)
    changes = drain(reader)
    reader.close()
    assert [plain(c) for c in changes] == [
        ("insert", t, None, (("id", "1"), ("name", "a"), ("score", "1.5"))),
        ("insert", t, None, (("id", "2"), ("name", "b"), ("score", "2"))),
        ("update", t, (("id", "1"), ("name", "a"), ("score", "1.5")), (("id", "1"), ("name", "c"), ("score", "1.5"))),
        ("delete", t, (("id", "2"), ("name", "b"), ("score", "2")), None),
        ("insert", t, None, (("id", "3"), ("name", "None"), ("score", "None"))),
    ]
    assert changes[0].after == {"id": 1, "name": "a", "score": __import__("decimal").Decimal("1.5")}
    assert changes[0].table == f"public.{t}"
    assert len({c.lsn for c in changes[:4]}) == 1 and lsn_to_int(changes[4].lsn) > lsn_to_int(changes[0].lsn)
    assert changes[0].commit_time.tzinfo is not None


def script(t: str) -> tuple[list[str], list[tuple]]:
    """Statements (each its own transaction) and the changes they make."""
    statements, expected = [], []
    for i in range(6):
        statements.append(f"INSERT INTO {t} VALUES ({i}, 'n{i}', {i})")
        expected.append(("insert", t, None, (("id", str(i)), ("name", f"n{i}"), ("score", str(i)))))
    statements.append(f"UPDATE {t} SET score = 10 WHERE id = 1")
    expected.append(("update", t, (("id", "1"), ("name", "n1"), ("score", "1")), (("id", "1"), ("name", "n1"), ("score", "10"))))
    statements.append(f"DELETE FROM {t} WHERE id = 2")
    expected.append(("delete", t, (("id", "2"), ("name", "n2"), ("score", "2")), None))
    return statements, expected


class Plain:
    """The source with its records made plain (hashable) for the kit."""

    def __init__(self, source: PostgresCdcSource) -> None:
        self.source, self.name, self.replayable = source, source.name, True

    def splits(self) -> list[str]:
        return self.source.splits()

    def build_reader(self, splits, resume_state):
        return PlainReader(self.source.build_reader(splits, resume_state))


class PlainReader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def poll(self, n: int):
        batch = self.inner.poll(n)
        return None if batch is None else [plain(c) for c in batch]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("check", list(SOURCE_CHECKS))
@pytest.mark.parametrize("transactions", ["one change each", "all in one"])
def test_the_cdc_source_passes_every_source_check(names, check, transactions):
    """Each reader set gets a slot of its own, copied from a template slot made before the input, so
    every one of them sees the same changes."""
    template = names.slot("template")
    first = PostgresCdcSource([names.table], DSN, template)
    first.build_reader(first.splits(), None).close()
    statements, expected = script(names.table)
    execute(*statements, transaction=transactions == "all in one")
    made = iter(range(1000))
    current: list[str] = []

    def make_source() -> Plain:
        if current:  # the previous reader set is closed: its slot goes (the server has few)
            execute(f"SELECT pg_drop_replication_slot('{current[-1]}')")
            names.slots.remove(current[-1])
        slot = names.slot(f"k{next(made)}")
        execute(f"SELECT pg_copy_logical_replication_slot('{template}', '{slot}')")
        current.append(slot)
        return Plain(PostgresCdcSource([names.table], DSN, slot, publication=f"{template}_pub", until="now"))

    def acknowledged() -> int:
        with psycopg.connect(DSN) as conn:
            (confirmed,) = conn.execute(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (current[-1],)
            ).fetchone()
        return changes_before(template, lsn_to_int(confirmed))

    probe = acknowledged if transactions == "one change each" else None
    SOURCE_CHECKS[check](SourceCase(make_source, expected, acknowledged=probe))


def changes_before(template: str, confirmed: int) -> int:
    """How many changes of the input were committed in transactions that end at or before ``confirmed``."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        probe = f"{template}_probe"
        conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (template, probe))
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, "
            "'proto_version', '1', 'publication_names', %s)", (probe, f"{template}_pub"),
        ).fetchall()
    count = pending = 0
    for (data,) in rows:
        if data[:1] in (b"I", b"U", b"D"):
            pending += 1
        elif data[:1] == b"C":
            (end,) = struct.unpack_from("!Q", data, 10)
            if end <= confirmed:
                count += pending
            pending = 0
    return count


def test_the_slot_moves_only_when_a_checkpoint_covering_the_changes_completes(names):
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot, until="now")
    source.build_reader(source.splits(), None).close()
    statements, expected = script(names.table)
    execute(*statements)

    def confirmed() -> int:
        return lsn_to_int(next(s["confirmed"] for s in list_slots(DSN) if s["slot"] == slot))

    start = confirmed()
    reader = source.build_reader(source.splits(), None)
    assert len(reader.poll(3)) == 3
    reader.snapshot_for(1)
    drain(reader)
    reader.snapshot_for(2)
    assert confirmed() == start
    reader.notify_aborted(1)
    assert confirmed() == start
    reader.notify_complete(1)
    after_one = confirmed()
    assert after_one > start
    reader.close()
    # A restore from checkpoint 1's position reads the changes after it, and only those.
    restored = source.build_reader(source.splits(), {"slot": {"done": after_one, "skip": 0, "until": reader._until}})
    assert [plain(c) for c in drain(restored)] == expected[3:]
    restored.close()


def test_a_restore_older_than_the_slot_is_refused(names):
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot, until="now")
    reader = source.build_reader(source.splits(), None)
    old = reader.snapshot()["slot"]
    reader.close()
    execute(f"INSERT INTO {names.table} VALUES (1, 'a', 1)")
    reader = source.build_reader(source.splits(), None)
    drain(reader)
    reader.snapshot_for(1)
    reader.notify_complete(1)
    reader.close()
    with pytest.raises(PostgresCdcError, match="older than slot .* Restore the newest checkpoint"):
        source.build_reader(source.splits(), {"slot": old})


def test_a_second_job_on_the_same_slot_is_refused(names):
    source = PostgresCdcSource([names.table], DSN, names.slot())
    reader = source.build_reader(source.splits(), None)
    try:
        with pytest.raises(PostgresCdcError, match=r"is held by another job \(server process \d+\)"):
            source.build_reader(source.splits(), None)
    finally:
        reader.close()


def test_configuration_mistakes_are_one_line_errors(names):
    with pytest.raises(PostgresCdcError, match="table 'no_such_table' does not exist"):
        PostgresCdcSource(["no_such_table"], DSN, names.slot()).build_reader(["slot"], None)
    with pytest.raises(PostgresCdcError, match="cannot connect"):
        PostgresCdcSource([names.table], "postgresql://postgres@127.0.0.1:1/postgres", "s").build_reader(["slot"], None)
    with pytest.raises(fs.ConfigError, match="slot must be"):
        PostgresCdcSource([names.table], DSN, "Bad-Name")
    with pytest.raises(fs.ConfigError, match="until must be"):
        PostgresCdcSource([names.table], DSN, "ok", until="later")


def test_slots_are_listed_and_dropped_with_their_publication(names):
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot)
    source.build_reader(source.splits(), None).close()
    assert slot in [s["slot"] for s in list_slots(DSN)]
    drop_slot(DSN, slot)
    assert slot not in [s["slot"] for s in list_slots(DSN)]
    with pytest.raises(PostgresCdcError, match="no replication slot"):
        drop_slot(DSN, slot)


# ---- end to end ------------------------------------------------------------------------------------

WRITER = r'''
import sys, time, random, psycopg
dsn, table, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(n):
        k = rng.randrange(60)
        op = rng.random()
        if op < 0.6:
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE "
                         "SET name = EXCLUDED.name, score = EXCLUDED.score", (k, f"v{i}", i))
        elif op < 0.85:
            conn.execute(f"UPDATE {table} SET score = score + 1 WHERE id = %s", (k,))
        else:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (k,))
        if i % 20 == 0:
            time.sleep(0.02)
'''


class Apply(fs.KeyedProcessFunction):
    """Emits the row as it stands after each change: (id, name, score, alive)."""

    def process(self, change, ctx):
        if change.op == "delete":
            yield (change.before["id"], None, None, False)
        else:
            after = change.after
            yield (after["id"], after["name"], after["score"], True)


def table_rows(table: str, where: str = "") -> list[tuple]:
    with psycopg.connect(DSN) as conn:
        return conn.execute(f"SELECT id, name, score FROM {table} {where} ORDER BY id").fetchall()


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
def test_a_job_reproduces_a_table_written_concurrently_under_crashes(names, tmp_path, mode):
    """Another process writes the table while the job runs; once the writer is done and the copy has
    caught up, the job is stopped: the copy equals the table, though the job failed twice on the way
    and restored a checkpoint each time."""
    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot)
    source.build_reader(source.splits(), None).close()     # the slot exists before the writes
    copy = f"{names.table}_copy"
    execute(f"CREATE TABLE {copy} (id int PRIMARY KEY, name text, score numeric, alive boolean NOT NULL)")
    flow = fs.Dataflow("cdc-copy")
    (flow.source(PostgresCdcSource([names.table], DSN, slot), uid="changes")
         .key_by(lambda change: (change.after or change.before)["id"])
         .process(Apply(), uid="apply")
         .sink(fs.PostgresSink(copy, DSN, mode="upsert", key=["id"]), uid="copy"))
    failpoints = fs.Failpoints({"sink.before_commit": "raise@4", "operator.process": "raise@30"})
    control = fs.JobControl()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="50ms", mode=mode),
                recovery=fs.RecoveryOptions(restart=FAST_RESTART),
                execution=fs.ExecutionOptions(executor="threads"),
                failpoints=failpoints,
                control=control,
            )
        except BaseException as error:  # reported below
            outcome["error"] = error

    job = threading.Thread(target=run)
    job.start()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, DSN, names.table, "800"])
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
    assert failpoints.fired("sink.before_commit") == 1 and failpoints.fired("operator.process") == 1
    assert result.restarts == 2 and all(c is not None and c >= 1 for c in result.restored_from[1:]), result
    assert table_rows(copy, "WHERE alive") == table_rows(names.table)


def test_the_postgres_slots_command_lists_and_drops_a_slot(names, capsys):
    from flowstate.cli import main

    slot = names.slot()
    source = PostgresCdcSource([names.table], DSN, slot)
    source.build_reader(source.splits(), None).close()
    assert main(["postgres-slots", DSN]) == 0
    assert slot in capsys.readouterr().out
    assert main(["postgres-slots", DSN, "--drop", slot]) == 0
    assert f"dropped slot {slot}" in capsys.readouterr().out
    assert main(["postgres-slots", DSN]) == 0
    assert slot not in capsys.readouterr().out
    assert main(["postgres-slots", "postgresql://postgres@127.0.0.1:1/postgres"]) == 2
    assert "connection" in capsys.readouterr().err
