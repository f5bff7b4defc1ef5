"""The checkpoint doctor on histories recorded from real runs (``record_histories.py``), and its
pure pieces on hand-made facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flowstate.cli import main
from flowstate.observe.doctor import Facts, Rule, diagnose, facts_of
from flowstate.observe.history import (
    HISTORY_FILE,
    CheckpointRecord,
    StartRecord,
    SubtaskStats,
    encode,
    parse_lines,
)

HISTORIES = Path(__file__).parent / "histories"


def recorded(name: str) -> Facts:
    return facts_of(parse_lines((HISTORIES / f"{name}.jsonl").read_text().splitlines()))


# Each recorded run and every rule its history shows; nothing else may be found in it.
EXPECTED = {
    "healthy": set(),
    "backpressure": {Rule.BACKPRESSURE},
    "expired": {Rule.FAILING},
    "declined": {Rule.FAILING},
    "skew": {Rule.DOMINANT_SUBTASK, Rule.BACKPRESSURE},  # the hot subtask back-pressures the sources
    "sync": {Rule.SYNC_PART, Rule.STATE_GROWTH},  # a new key per record, too
    "upload": {Rule.UPLOAD},
    "growth": {Rule.STATE_GROWTH},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_recorded_history_gets_exactly_its_diagnosis(name: str) -> None:
    findings = diagnose(recorded(name))
    assert {f.rule for f in findings} == EXPECTED[name], [f.sentence for f in findings]
    for f in findings:
        assert any(ch.isdigit() for ch in f.sentence), f.sentence
        assert f.suggestion


def by_rule(name: str, rule: Rule) -> str:
    finding = next(f for f in diagnose(recorded(name)) if f.rule is rule)
    return f"{finding.sentence} {finding.suggestion}"


def test_back_pressure_suggests_unaligned_checkpoints_or_an_alignment_timeout() -> None:
    text = by_rule("backpressure", Rule.BACKPRESSURE)
    assert "--mode unaligned" in text and "--alignment-timeout" in text


def test_expired_checkpoints_are_counted_with_the_timeout_and_the_subtasks_still_awaited() -> None:
    text = by_rule("expired", Rule.FAILING)
    assert "7 of the last 8 checkpoints failed: 7 expired (after the 300 ms timeout)" in text
    assert "1-keyed_process#" in text and "--timeout" in text


def test_declines_name_the_reason_the_subtask_and_the_setting_to_change() -> None:
    text = by_rule("declined", Rule.FAILING)
    assert "declined for too much in-flight data" in text and "by 1-keyed_process#" in text
    assert "--max-inflight-bytes" in text


def test_the_dominant_subtask_is_the_one_that_owns_the_hot_key() -> None:
    facts = recorded("skew")
    text = by_rule("skew", Rule.DOMINANT_SUBTASK)
    # The subtask named is the one that acknowledged last in the recorded checkpoints.
    named = text.split("Subtask ", 1)[1].split(" ", 1)[0]
    slowest = {max(c.subtasks, key=lambda s: s.ack_seconds or 0).task for c in facts.checkpoints[:-1]}
    assert slowest == {named}
    assert named.startswith("1-keyed_process#") and "skew" in text


def test_the_upload_suggestions_follow_the_configuration() -> None:
    text = by_rule("upload", Rule.UPLOAD)
    assert "--state-backend rocksdb" in text and "--compression zstd" in text


def test_a_rocksdb_synchronous_part_is_blamed_on_its_flush() -> None:
    assert "RocksDB flushes" in by_rule("sync", Rule.SYNC_PART)


def test_state_growth_reports_first_and_last_size() -> None:
    facts = recorded("growth")
    text = by_rule("growth", Rule.STATE_GROWTH)
    assert f"at checkpoint {facts.checkpoints[0].checkpoint_id} " in text
    assert f"at checkpoint {facts.checkpoints[-1].checkpoint_id} " in text


# ---- hand-made facts ------------------------------------------------------------------------------


def checkpoint(cid: int, duration: float, *, size: int = 1000, sync: float = 0.0, ack: float | None = None) -> CheckpointRecord:
    subtasks = tuple(SubtaskStats(f"v#{i}", ack if ack is not None else duration, 0.0, sync, 0.001, 0, size // 2, size // 2)
                     for i in range(2))
    return CheckpointRecord(cid, "completed", 1000.0 + cid, duration, size, size, subtasks=subtasks)


def test_state_that_levels_off_is_not_growth() -> None:
    sizes = [100_000, 200_000, 300_000, 400_000, 410_000, 412_000, 413_000, 413_500, 414_000]
    facts = Facts(tuple(checkpoint(i + 1, 0.01, size=s) for i, s in enumerate(sizes)))
    assert Rule.STATE_GROWTH not in {f.rule for f in diagnose(facts)}
    growing = [100_000 * (i + 1) for i in range(9)]
    facts = Facts(tuple(checkpoint(i + 1, 0.01, size=s) for i, s in enumerate(growing)))
    assert Rule.STATE_GROWTH in {f.rule for f in diagnose(facts)}


def test_a_short_synchronous_part_is_no_finding_even_when_it_is_most_of_a_fast_checkpoint() -> None:
    facts = Facts(tuple(checkpoint(i, 0.01, sync=0.008) for i in range(1, 8)))
    assert diagnose(facts) == []


def test_unaligned_checkpoints_are_not_told_to_become_unaligned() -> None:
    slow = tuple(checkpoint(i, 2.0) for i in range(1, 8))
    assert Rule.BACKPRESSURE in {f.rule for f in diagnose(Facts(slow, {"mode": "exactly_once"}))}
    assert Rule.BACKPRESSURE not in {f.rule for f in diagnose(Facts(slow, {"mode": "unaligned"}))}


def test_only_the_newest_configuration_counts() -> None:
    old = [StartRecord(1.0, "j", {"mode": "exactly_once"}), *(checkpoint(i, 2.0) for i in range(1, 8))]
    new = [StartRecord(2000.0, "j", {"mode": "unaligned"}), *(checkpoint(i, 0.01) for i in range(8, 12))]
    facts = facts_of(old + new)
    assert [c.checkpoint_id for c in facts.checkpoints] == [8, 9, 10, 11]
    assert diagnose(facts) == []


def test_a_torn_or_unknown_line_is_skipped() -> None:
    good = json.dumps(encode(checkpoint(3, 0.5)))
    events = parse_lines([good, good[:40], '{"event": "nonsense"}', "[]", good])
    assert [e.checkpoint_id for e in events] == [3, 3]  # type: ignore[union-attr]


# ---- the command ------------------------------------------------------------------------------------


def test_the_doctor_command_prints_findings_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copyfile(HISTORIES / "expired.jsonl", tmp_path / HISTORY_FILE)
    assert main(["checkpoints", "doctor", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("[critical] failing: 7 of the last 8 checkpoints failed")
    assert "→ Barriers that wait behind back-pressure" in out
    assert main(["checkpoints", "doctor", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["rule"] == "failing"


def test_the_doctor_command_finds_nothing_in_a_healthy_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copyfile(HISTORIES / "healthy.jsonl", tmp_path / HISTORY_FILE)
    assert main(["checkpoints", "doctor", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("No problem found in the last 15 checkpoint(s).")
