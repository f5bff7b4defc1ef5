"""The windowed workload of the chaos campaign: its checker accepts what a run commits after a crash
and a restore, and catches a missing, a duplicated and a changed window row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.testing.oracles import windows

COUNT = 4_000


def run_with_a_crash(tmp_path: Path) -> fs.JobResult:
    failpoints = fs.Failpoints({"sink.before_commit": "raise@9"})  # 4 sinks commit per checkpoint
    result = fs.run(
        windows.windows_job(tmp_path / "out", count=COUNT, rate=4000.0),
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="30ms"),
        state=fs.StateOptions(backend="rocksdb", directory=tmp_path / "state"),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(3, 0.0)),
        execution=fs.ExecutionOptions(executor="threads", batch_size=32),
        failpoints=failpoints,
    )
    assert failpoints.fired("sink.before_commit") == 1
    assert any(c is not None and c >= 1 for c in result.restored_from[1:]), result.restored_from
    assert result.records < COUNT, "the last attempt read the whole input: it did not resume from a checkpoint"
    return result


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("windows")
    run_with_a_crash(tmp_path)
    return tmp_path / "out"


def directories(out: Path) -> dict[str, Path]:
    return {"sessions": out / "sessions", "minutes": out / "minutes"}


def test_a_run_restored_after_a_crash_commits_exactly_the_computed_windows(committed):
    rows = windows.expected_rows(COUNT)
    assert sum(1 for r in rows if r[0] == "s") > 24 and sum(1 for r in rows if r[0] == "m" and r[4]) > 100
    assert windows.check_output(directories(committed), "exactly_once", count=COUNT) == []


def copy_with(out: Path, tmp_path: Path, edit) -> Path:  # noqa: ANN001
    copy = tmp_path / "copy"
    for uid in ("sessions", "minutes"):
        (copy / uid).mkdir(parents=True)
        lines = [line for path in sorted((out / uid).iterdir()) if not path.name.startswith(".")
                 for line in path.read_text().splitlines()]
        (copy / uid / "part-0.jsonl").write_text("".join(f"{line}\n" for line in edit(uid, lines)))
    return copy


def test_the_checker_finds_a_missing_a_duplicated_and_a_changed_row(committed, tmp_path):
    dropped = copy_with(committed, tmp_path / "a", lambda uid, lines: lines[1:] if uid == "sessions" else lines)
    assert "1 window rows missing" in windows.check_output(directories(dropped), "exactly_once", count=COUNT)[0]

    doubled = copy_with(committed, tmp_path / "b", lambda uid, lines: lines + lines[:1] if uid == "minutes" else lines)
    assert windows.check_output(directories(doubled), "at_least_once", count=COUNT) == []
    assert "duplicated or unexpected" in windows.check_output(directories(doubled), "exactly_once", count=COUNT)[0]

    def bump(uid: str, lines: list[str]) -> list[str]:
        if uid != "minutes":
            return lines
        row = json.loads(lines[0])
        row[3] += 1
        return [json.dumps(row), *lines[1:]]

    changed = copy_with(committed, tmp_path / "c", bump)
    assert len(windows.check_output(directories(changed), "exactly_once", count=COUNT)) == 2
