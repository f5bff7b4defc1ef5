"""``PostgresSink`` against the real PostgreSQL server on 127.0.0.1:5432.

The writer's rules (see ``flowstate/connectors/postgres.py``) one by one, then the word count of the
engine tests writing into a table under crashes at every sink failpoint: the table must equal the
batch reference exactly, and the run must have restored a checkpoint after reading less than the
whole input (a restart from scratch would refuse, since the table already holds committed rows).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections import Counter

import pytest

import flowstate as fs
from flowstate.connectors.postgres import MARKER_TABLE, PostgresSink, PostgresSinkError, dsn_from_env
from flowstate.failpoints import Failpoints, InjectedFailure

from tests.engine.jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    assert_restored_from_a_checkpoint,
    batch_reference,
    difference,
    generator_source,
    lines,
    wordcount,
)

psycopg = pytest.importorskip("psycopg")
DSN = dsn_from_env()


@pytest.fixture(scope="module")
def server() -> str:
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as error:
        message = f"PostgreSQL is not reachable at {DSN}: {str(error).strip()}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must start it: see .ci/run)")
        pytest.skip(message)
    return DSN


@pytest.fixture
def table(server: str):
    """A fresh table ``(word text, n bigint)`` with a unique name; dropped afterwards, with its markers."""
    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (word text NOT NULL, n bigint NOT NULL)")
    yield name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        if conn.execute("SELECT to_regclass(%s)", (MARKER_TABLE,)).fetchone()[0] is not None:
            conn.execute(f"DELETE FROM {MARKER_TABLE} WHERE sink LIKE %s", (f"%{name}%",))


def rows(table: str) -> list[tuple]:
    with psycopg.connect(DSN) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall())


# ---- the writer's rules -------------------------------------------------------------------------


def test_rows_become_visible_only_when_their_checkpoint_completes(table):
    writer = PostgresSink(table, DSN).build_writer(0, 1, None)
    writer.write_batch([("a", 1), ("b", 2)])
    writer.pre_commit(1)
    writer.write_batch([("c", 3)])
    assert rows(table) == []
    writer.commit(1)
    assert rows(table) == [("a", 1), ("b", 2)]
    writer.pre_commit(2)
    writer.commit(2)
    assert rows(table) == [("a", 1), ("b", 2), ("c", 3)]
    writer.close()


def test_a_restore_commits_what_the_snapshot_names_once_even_if_it_was_committed_before(table):
    sink = PostgresSink(table, DSN)
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([("a", 1)])
    writer.pre_commit(1)
    snapshot = writer.snapshot()
    writer.commit(1)            # committed, then the job died before the next checkpoint
    writer.close()
    for _ in range(2):          # restored twice from the same checkpoint: re-commits are no-ops
        sink.build_writer(0, 1, snapshot).close()
    assert rows(table) == [("a", 1)]


def test_a_restore_commits_a_checkpoint_whose_commit_never_ran(table):
    sink = PostgresSink(table, DSN)
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([("a", 1), ("b", 1)])
    writer.pre_commit(1)
    snapshot = writer.snapshot()
    writer.close()              # died after the checkpoint completed, before the notification
    sink.build_writer(0, 1, snapshot).close()
    assert rows(table) == [("a", 1), ("b", 1)]


def test_a_crash_in_the_middle_of_a_commit_leaves_nothing_and_the_re_commit_writes_everything_once(table):
    sink = PostgresSink(table, DSN)
    writer = sink.build_writer(0, 1, None)
    writer.attach_failpoints(Failpoints({"sink.mid_commit": "raise"}))
    writer.write_batch([("a", 1), ("b", 1)])
    writer.pre_commit(1)
    snapshot = writer.snapshot()
    with pytest.raises(InjectedFailure):
        writer.commit(1)
    writer.close()
    assert rows(table) == []    # the rows and the marker are one transaction
    sink.build_writer(0, 1, snapshot).close()
    assert rows(table) == [("a", 1), ("b", 1)]


def test_recovery_symmetry_at_every_cut_point(table):
    """Cut the writer's life after every step; restoring from the last snapshot and replaying what
    followed it gives the table of a run without the cut."""
    script = [("write", [("a", 1)]), ("pre", 1), ("write", [("b", 1)]), ("commit", 1), ("pre", 2),
              ("write", [("c", 1)]), ("commit", 2), ("pre", 3), ("commit", 3)]
    expected = [("a", 1), ("b", 1), ("c", 1)]
    for cut in range(len(script) + 1):
        name = f"{table}_cut{cut}"
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {name} (LIKE {table})")
        try:
            sink = PostgresSink(name, DSN)
            writer = sink.build_writer(0, 1, None)
            snapshot, snapshot_at = None, 0
            for i, (step, arg) in enumerate(script[:cut]):
                apply(writer, step, arg)
                if step == "pre":
                    snapshot, snapshot_at = writer.snapshot(), i + 1
            writer.close()
            # The checkpoint of the last snapshot completed; everything after it is replayed.
            writer = sink.build_writer(0, 1, snapshot)
            for step, arg in script[snapshot_at:]:
                apply(writer, step, arg)
            writer.close()
            assert rows(name) == expected, f"cut after step {cut}"
        finally:
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(f"DROP TABLE {name}")
                conn.execute(f"DELETE FROM {MARKER_TABLE} WHERE sink = %s", (f"postgres-sink:{name}",))


def apply(writer, step, arg):
    match step:
        case "write":
            writer.write_batch(arg)
        case "pre":
            writer.pre_commit(arg)
        case "commit":
            writer.commit(arg)


def test_rescaling_commits_every_pending_committable_exactly_once(table):
    sink = PostgresSink(table, DSN)
    old = [sink.build_writer(i, 2, None) for i in range(2)]
    for i, writer in enumerate(old):
        writer.write_batch([(f"w{i}", 1)])
        writer.pre_commit(1)
    old[0].commit(1)                       # subtask 0 committed, subtask 1 had not yet
    snapshots = [writer.snapshot() for writer in old]
    for writer in old:
        writer.close()
    (state,) = sink.redistribute_state(snapshots, 1)
    sink.build_writer(0, 1, state).close()
    assert rows(table) == [("w0", 1), ("w1", 1)]


def test_a_fresh_start_into_a_table_holding_committed_rows_is_refused(table):
    sink = PostgresSink(table, DSN)
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([("a", 1)])
    writer.pre_commit(1)
    writer.commit(1)
    writer.close()
    with pytest.raises(PostgresSinkError, match="already holds rows committed by an earlier run.*DELETE FROM"):
        sink.build_writer(0, 1, None)


def test_a_restore_falling_back_past_committed_rows_is_refused(table):
    sink = PostgresSink(table, DSN)
    writer = sink.build_writer(0, 1, None)
    writer.write_batch([("a", 1)])
    writer.pre_commit(1)
    older = writer.snapshot()
    writer.commit(1)
    writer.write_batch([("b", 1)])
    writer.pre_commit(2)
    writer.commit(2)
    writer.close()
    with pytest.raises(PostgresSinkError, match="rows of checkpoint 2 .* newer than checkpoint 1"):
        sink.build_writer(0, 1, older)


def test_upsert_keeps_the_last_row_per_key_and_may_start_fresh_over_its_own_output(server):
    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (word text PRIMARY KEY, n bigint NOT NULL)")
    try:
        sink = PostgresSink(name, DSN, mode="upsert", key=["word"])
        for _ in range(2):      # the second run starts fresh: upserting again leaves the same table
            writer = sink.build_writer(0, 1, None)
            writer.write_batch([("a", 1), ("b", 1), ("a", 2)])
            writer.pre_commit(1)
            writer.write_batch([("a", 3)])
            writer.pre_commit(2)
            writer.commit(2)
            writer.close()
            assert rows(name) == [("a", 3), ("b", 1)]
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"DELETE FROM {MARKER_TABLE} WHERE sink = %s", (f"postgres-sink:{name}",))


@dataclasses.dataclass
class Count:
    word: str
    n: int


def test_records_map_to_columns_from_tuples_dicts_dataclasses_and_a_row_function(table):
    writer = PostgresSink(table, DSN, delivery="at_least_once").build_writer(0, 1, None)
    writer.write_batch([("t", 1), {"word": "d", "n": 2}, Count("c", 3)])
    writer.finish()
    writer.close()
    writer = PostgresSink(table, DSN, delivery="at_least_once", row=lambda r: (r[1], r[0])).build_writer(0, 1, None)
    writer.write_batch([(4, "f")])
    writer.pre_commit(1)
    writer.close()
    assert rows(table) == [("c", 3), ("d", 2), ("f", 4), ("t", 1)]


@pytest.mark.parametrize(("record", "message"), [
    (("a",), r"record \('a',\) has 1 fields for 2 columns"),
    ({"word": "a"}, r"column 'n': record \{'word': 'a'\} has no value for it"),
    ({"word": "a", "n": 1, "x": 2}, r"has key 'x', which is not a column"),
    (("a", "many"), r"column 'n': record \('a', 'many'\) would put a str into a bigint column"),
    ((None, 1), r"column 'word': record \(None, 1\) would put NULL into a NOT NULL column"),
    ("text", r"record 'text' is not a tuple, list, dict or dataclass"),
])
def test_a_record_that_does_not_fit_names_the_sink_the_column_and_the_record(table, record, message):
    writer = PostgresSink(table, DSN, name="counts").build_writer(0, 1, None)
    with pytest.raises(PostgresSinkError, match=r"PostgresSink 'counts': .*" + message):
        writer.write_batch([("ok", 1), record])
    writer.close()


def test_configuration_mistakes_are_one_line_errors(server):
    unreachable = "postgresql://postgres:secret@127.0.0.1:1/postgres"
    with pytest.raises(PostgresSinkError, match=r"cannot connect to postgresql://postgres:\*\*\*@127.0.0.1:1") as error:
        PostgresSink("t", unreachable).build_writer(0, 1, None)
    assert "\n" not in str(error.value) and "secret" not in str(error.value)
    with pytest.raises(PostgresSinkError, match="table 'no_such_table_here' does not exist"):
        PostgresSink("no_such_table_here", server).build_writer(0, 1, None)
    with pytest.raises(fs.ConfigError, match="mode='upsert' needs key"):
        PostgresSink("t", server, mode="upsert")
    with pytest.raises(fs.ConfigError, match="delivery must be one of"):
        PostgresSink("t", server, delivery="twice")


# ---- end to end ----------------------------------------------------------------------------------

SINK_CRASHES = [
    "sink.mid_pre_commit", "sink.pre_committed_before_ack", "coordinator.metadata_before_notify",
    "sink.before_commit", "sink.mid_commit", "sink.after_commit",
]


@pytest.mark.parametrize("mode", ["exactly_once", "unaligned"])
@pytest.mark.parametrize("failpoint", SINK_CRASHES)
def test_the_word_count_into_postgres_is_exactly_once_under_a_crash_at_every_sink_failpoint(
    table, tmp_path, failpoint, mode,
):
    hits_per_checkpoint = 1 if failpoint.startswith("coordinator") else 2
    failpoints = fs.Failpoints({failpoint: f"raise@{2 * hits_per_checkpoint + 1}"})
    flow = wordcount(tmp_path / "unused", source=generator_source(INPUT_LINES, rate=RATE),
                     sink=PostgresSink(table, DSN))
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL, mode=mode),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired(failpoint) == 1
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    words = sum(len(line.split()) for line in lines(INPUT_LINES))
    assert result.records < INPUT_LINES, f"the last attempt read all {result.records} lines: it did not restore"
    expected = batch_reference(lines(INPUT_LINES))
    actual = rows(table)
    assert Counter(actual) == expected, difference(actual, expected)
    assert len(actual) == words


def test_dict_and_list_values_go_into_jsonb_columns(server):
    name = f"fs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id bigint, doc jsonb)")
    try:
        writer = PostgresSink(name, DSN).build_writer(0, 1, None)
        writer.write_batch([(1, {"a": [1, 2]}), (2, None)])
        writer.pre_commit(1)
        writer.commit(1)
        writer.close()
        assert rows(name) == [(1, {"a": [1, 2]}), (2, None)]
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"DELETE FROM {MARKER_TABLE} WHERE sink = %s", (f"postgres-sink:{name}",))


def test_at_least_once_loses_nothing_under_a_crash(table, tmp_path):
    failpoints = fs.Failpoints({"sink.before_commit": "raise@5"})
    flow = wordcount(tmp_path / "unused", source=generator_source(INPUT_LINES, rate=RATE),
                     sink=PostgresSink(table, DSN, delivery="at_least_once"))
    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL, mode="exactly_once"),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor="threads"),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    expected = batch_reference(lines(INPUT_LINES))
    actual = Counter(rows(table))
    assert not expected - actual, difference(actual, expected)


def test_fresh_over_a_table_holding_committed_rows_is_refused_before_any_checkpoint_is_discarded(table, tmp_path):
    """The sink lists its commit markers to the restore planner, as a FileSink lists its files: a
    ``--fresh`` run is refused with the way forward, and the checkpoints stay for a restore."""
    def flow() -> fs.Dataflow:
        return wordcount(tmp_path / "unused", source=generator_source(20), sink=PostgresSink(table, DSN))

    fs.run(
        flow(),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    before = rows(table)
    kept = sorted(p.name for p in (tmp_path / "chk").iterdir())
    with pytest.raises(fs.ConfigError) as refused:
        fs.run(
            flow(),
            checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval=INTERVAL),
            recovery=fs.RecoveryOptions(fresh=True),
            execution=fs.ExecutionOptions(executor="threads"),
        )
    message = str(refused.value)
    assert "\n" not in message
    for named in ("cannot start from scratch (--fresh)", f"sink 'postgres-sink:{table}' holds 2 committed commit markers",
                  f"in table {table}", f"DELETE FROM {MARKER_TABLE} WHERE sink = 'postgres-sink:{table}'",
                  "run without --fresh"):
        assert named in message, message
    assert sorted(p.name for p in (tmp_path / "chk").iterdir()) == kept and rows(table) == before
    assert PostgresSink(table, DSN, mode="upsert", key=["word"]).committed_output() == ()
