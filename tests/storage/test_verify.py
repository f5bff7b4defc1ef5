"""``flowstate checkpoints verify`` (``flowstate.storage.verify`` and its command): every kind of
problem is found and listed with its file, a sound storage passes, and the exit status says which.
"""

from __future__ import annotations

import time

import pytest

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.cli import main
from flowstate.render import verify_report as format_report
from flowstate.storage.base import (
    CheckpointMetadata,
    StateHandle,
    StoredFile,
    TaskState,
)
from flowstate.storage.verify import (
    CheckpointFacts,
    Facts,
    assess,
    verify,
)

from .test_conformance import write_checkpoint

HOUR = 3600.0


def later(hours: float = 2.0) -> float:
    return time.time() + hours * HOUR


def report_of(harness, **kwargs):
    kwargs.setdefault("grace_seconds", HOUR)
    kwargs.setdefault("now", time.time())
    return verify(harness.open(), location=harness.location, **kwargs)


def kinds(report) -> list[tuple[str, str | None]]:
    return [(p.kind, p.path) for p in report.problems]


@pytest.fixture
def incremental(harness):
    """Checkpoints 1 and 2 (completed, sharing b.sst) and 3 (incomplete: crashed)."""
    storage = harness.open()
    write_checkpoint(storage, 1, {0: ["a.sst", "b.sst"]})
    write_checkpoint(storage, 2, {0: ["b.sst", "c.sst"], 1: ["x.sst"]})
    write_checkpoint(storage, 3, {0: ["d.sst"]}, complete=False)
    return harness


def test_a_sound_storage_verifies_with_young_debris_and_no_problem(incremental):
    report = report_of(incremental, retained=2)

    assert report.ok, format_report(report)
    assert [(c.checkpoint_id, c.status, c.files) for c in report.checkpoints] == [
        (1, "completed", 4), (2, "completed", 5), (3, "incomplete", 0),
    ]
    assert [f.path for f in report.young_orphans] == [
        "chk-000003/count#0.state", "chk-000003/count#1.state", "shared/count-0/d.sst",
    ]
    assert report.total_bytes == sum(len(incremental.read(p)) for p in incremental.paths())
    assert report.shared_files == 5
    assert format_report(report).endswith("OK: every referenced file verifies, no old orphans, within retention")


def test_metadata_that_does_not_decode_is_a_problem_naming_the_file(incremental):
    incremental.write("chk-000002/_metadata", incremental.read("chk-000002/_metadata")[:-2])

    report = report_of(incremental)

    assert kinds(report) == [("metadata", "chk-000002/_metadata")]
    assert "chk-000002/_metadata: not valid JSON" in report.problems[0].message
    assert report.checkpoints[1].status == "corrupt"


@pytest.mark.parametrize(
    ("path", "damage", "kind"),
    [
        ("chk-000002/count#1.state", lambda h, p: h.delete(p), "missing"),
        ("shared/count-0/c.sst", lambda h, p: h.delete(p), "missing"),
        ("chk-000001/count#0.state", lambda h, p: h.write(p, h.read(p) + b"!"), "size"),
        ("shared/count-1/x.sst", lambda h, p: h.write(p, h.read(p)[:10]), "size"),
        ("chk-000002/count#0.state", lambda h, p: h.write(p, b"?" + h.read(p)[1:]), "checksum"),
        ("shared/count-0/a.sst", lambda h, p: h.write(p, h.read(p)[::-1]), "checksum"),
    ],
)
def test_each_damaged_referenced_file_is_a_problem_of_its_kind(incremental, path, damage, kind):
    damage(incremental, path)

    report = report_of(incremental)

    assert kinds(report) == [(kind, path)]
    assert path in report.problems[0].message
    assert f"{path} " in format_report(report)


def test_a_shared_file_damaged_under_two_checkpoints_is_listed_for_each(incremental):
    incremental.write("shared/count-0/b.sst", b"gone bad")

    report = report_of(incremental)

    assert [(p.kind, p.path, p.checkpoint_id) for p in report.problems] == [
        ("size", "shared/count-0/b.sst", 1), ("size", "shared/count-0/b.sst", 2),
    ]


def test_unreferenced_files_older_than_the_grace_period_are_orphans(incremental):
    incremental.write("shared/count-1/left-by-a-crash.sst", b"x" * 100)

    young = report_of(incremental)
    old = report_of(incremental, now=later())

    assert young.ok
    assert kinds(old) == [
        ("orphan", "chk-000003/count#0.state"),
        ("orphan", "chk-000003/count#1.state"),
        ("orphan", "shared/count-0/d.sst"),
        ("orphan", "shared/count-1/left-by-a-crash.sst"),
    ]
    assert "shared/count-1/left-by-a-crash.sst (100 B) is referenced by no checkpoint" in format_report(old)


def test_more_bytes_than_the_retained_checkpoints_reference_break_the_retention_bound(incremental):
    within = report_of(incremental, retained=2)
    beyond = report_of(incremental, retained=1)

    assert within.ok
    assert kinds(beyond) == [("retention", None)]
    assert "completed checkpoints beyond retention: 1" in beyond.problems[0].message
    assert beyond.retention_bound < within.retention_bound


def test_savepoints_are_within_the_retention_bound_whatever_the_number_retained(harness):
    storage = harness.open()
    cid = CheckpointId(1)
    handle = storage.write_state(cid, "count#0.state", b"savepoint state" * 100)
    task = TaskState(TaskId("count#0"), "count", 0, handle)
    storage.write_metadata(CheckpointMetadata(cid, "j", "exactly_once", False, 1.0, 2.0, 8, {}, (task,), savepoint=True))
    write_checkpoint(storage, 2, {0: ["a.sst"]})

    report = report_of(harness, retained=1)

    assert report.ok, format_report(report)
    assert report.checkpoints[0].savepoint


def test_every_problem_is_listed_not_only_the_first(incremental):
    incremental.delete("shared/count-0/c.sst")
    incremental.write("chk-000001/_metadata", b"{}")
    incremental.write("shared/junk", b"junk")

    report = report_of(incremental, now=later(), retained=1)

    assert sorted(kinds(report), key=str) == sorted([
        ("metadata", "chk-000001/_metadata"),
        ("missing", "shared/count-0/c.sst"),
        ("orphan", "chk-000001/count#0.state"),
        ("orphan", "chk-000001/count#1.state"),
        ("orphan", "chk-000003/count#0.state"),
        ("orphan", "chk-000003/count#1.state"),
        ("orphan", "shared/count-0/a.sst"),
        ("orphan", "shared/count-0/d.sst"),
        ("orphan", "shared/junk"),
    ], key=str)
    text = format_report(report)
    assert "9 problem(s):" in text and text.endswith("FAILED")


def test_a_file_that_cannot_be_read_is_a_problem_of_its_own_kind():
    handle = StateHandle("chk-000001/a.state", 3, "0" * 64)
    task = TaskState(TaskId("a#0"), "a", 0, handle)
    metadata = CheckpointMetadata(CheckpointId(1), "j", "exactly_once", False, 0.0, 1.0, 8, {}, (task,))
    facts = Facts(
        files=(StoredFile("chk-000001/_metadata", 500, 0.0), StoredFile("chk-000001/a.state", 3, 0.0)),
        checkpoints=(CheckpointFacts(CheckpointId(1), metadata, None),),
        content_problems={handle: "cannot read chk-000001/a.state: Input/output error"},
    )

    report = assess(facts, location="x", grace_seconds=0.0, now=10.0, retained=1)

    assert kinds(report) == [("unreadable", "chk-000001/a.state")]
    assert report.retention_bound == 503


# --- the command -------------------------------------------------------------------------------


def test_the_command_exits_0_when_everything_verifies_and_1_listing_each_problem(incremental, capsys):
    if incremental.kind == "memory":
        pytest.skip("the command opens storage by its location, and memory has none")
    assert main(["checkpoints", "verify", incremental.location, "--retained", "2", *cli_options(incremental)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("within retention")

    incremental.delete("shared/count-1/x.sst")
    assert main(["checkpoints", "verify", incremental.location, "--grace", "0", *cli_options(incremental)]) == 1

    out = capsys.readouterr().out
    assert "  missing  shared/count-1/x.sst is missing (checkpoint 2)\n" in out
    assert "  orphan   shared/count-0/d.sst (4.0 KiB) is referenced by no checkpoint" in out
    assert out.rstrip().endswith("FAILED")


def cli_options(harness) -> list[str]:
    if harness.kind == "local":
        return []
    return [item for key, value in harness.options.items() for item in ("-o", f"{key}={value}")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["checkpoints", "verify", "no-such-dir"], "no-such-dir is not a directory"),
        (["checkpoints", "verify", "gs://bucket/x"], "unsupported checkpoint storage URL"),
        (["checkpoints", "verify", ".", "--retained", "0"], "--retained must be at least 1"),
        (["checkpoints", "verify", ".", "--grace", "soon"], "cannot read grace period 'soon'"),
        (["checkpoints", "verify", ".", "-o", "endpoint"], "use KEY=VALUE"),
        (["checkpoints", "verify", ".", "-o", "endpoint=http://x"], "unknown local storage option"),
    ],
)
def test_a_mistake_in_the_command_exits_2_with_a_message(arguments, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert main(arguments) == 2

    assert message in capsys.readouterr().err


def test_an_unreachable_store_exits_1_saying_it_could_not_verify(capsys, moto, proxy, faults, tmp_path):
    from .conftest import S3Harness

    harness = S3Harness(moto, proxy, tmp_path / "cache")
    write_checkpoint(harness.open(), 1)
    faults.always = 500

    assert main(["checkpoints", "verify", harness.location, *cli_options(harness)]) == 1

    assert f"cannot verify {harness.location}" in capsys.readouterr().err


def test_a_retained_count_that_is_not_a_number_exits_2_with_one_line_naming_the_option(capsys):
    assert main(["checkpoints", "verify", ".", "--retained", "many"]) == 2

    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and "--retained" in error[0], error
