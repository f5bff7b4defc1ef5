"""The oracles' checkers on hand-made inputs: each kind of breakage they exist to find is found, and
correct inputs pass. Then the same checkers on checkpoints the engine really wrote."""

from __future__ import annotations

import ast
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import flowstate as fs
from flowstate.testing import oracles
from flowstate.testing.oracles import bank, sequence
from flowstate.testing.oracles.checkpoints import (
    Checkpoint,
    Unreadable,
    completed_checkpoints,
)

from .handmade import channel_state, keyed, write_checkpoint, write_committed

# ---- sequence: the output checker ----------------------------------------------------------------------

COUNT = 8
SPLITS = 2
"""Sources s0 and s1, four records each."""


def check(tmp_path: Path, files: dict[str, list]) -> sequence.SequenceCheck:
    return sequence.check_output(write_committed(tmp_path / "out", files), count=COUNT, splits=SPLITS)


def complete(**changes: list) -> dict[str, list]:
    """Every record once, in order, s0 from subtask 0 in two files and s1 from subtask 1."""
    files = {"part-0-0.jsonl": [["s0", 0], ["s0", 1]], "part-0-1.jsonl": [["s0", 2], ["s0", 3]],
             "part-1-0.jsonl": [["s1", 0], ["s1", 1], ["s1", 2], ["s1", 3]]}
    files.update({name.replace("_", "-") + ".jsonl": records for name, records in changes.items()})
    return files


def totals(found: sequence.SequenceCheck) -> dict[str, int]:
    kinds = ("lost", "duplicated", "out_of_order", "miscounted")
    return {kind: found.total(kind) for kind in kinds} | {"unexpected": found.unexpected_count}


NOTHING = {"lost": 0, "duplicated": 0, "out_of_order": 0, "miscounted": 0, "unexpected": 0}


def test_every_sequence_number_once_and_in_order_passes_in_every_mode(tmp_path):
    found = check(tmp_path, complete())

    assert totals(found) == NOTHING
    assert found.problems("exactly_once") == found.problems("at_least_once") == []


def test_a_missing_sequence_number_is_lost(tmp_path):
    found = check(tmp_path, complete(part_0_1=[["s0", 3]]))

    assert totals(found) == NOTHING | {"lost": 1}
    assert found.problems("exactly_once") == ["source s0: 1 lost of 4 records"]
    assert found.problems("at_least_once") == ["source s0: 1 lost of 4 records"]


def test_a_repeated_record_is_a_duplicate_which_only_at_least_once_allows(tmp_path):
    found = check(tmp_path, complete(part_0_1=[["s0", 1], ["s0", 2], ["s0", 3]]))

    assert totals(found) == NOTHING | {"duplicated": 1}
    assert found.problems("exactly_once") == ["source s0: 1 duplicated of 4 records"]
    assert found.problems("at_least_once") == []


def test_a_record_committed_before_a_smaller_one_of_its_source_is_out_of_order_in_every_mode(tmp_path):
    found = check(tmp_path, complete(part_0_0=[["s0", 1], ["s0", 0]]))

    assert totals(found) == NOTHING | {"out_of_order": 1}
    assert found.problems("at_least_once") == ["source s0: 1 out of order of 4 records"]


def test_commit_order_follows_the_file_numbers_not_the_names(tmp_path):
    files = {"part-0-9.jsonl": [["s0", 0], ["s0", 1]], "part-0-10.jsonl": [["s0", 2], ["s0", 3]],
             "part-1-0.jsonl": [["s1", n] for n in range(4)]}

    assert totals(check(tmp_path, files)) == NOTHING


def test_a_replay_in_at_least_once_is_duplicates_not_disorder(tmp_path):
    """After a restore, at-least-once commits again what followed the checkpoint: 2 comes again
    after 3, but only its first appearance counts for the order."""
    found = check(tmp_path, complete(part_0_1=[["s0", 2], ["s0", 3], ["s0", 2], ["s0", 3]]))

    assert totals(found) == NOTHING | {"duplicated": 2}
    assert found.problems("at_least_once") == []


def test_a_miscounted_record_breaks_exactly_once_only(tmp_path):
    found = check(tmp_path, complete(part_0_1=[["s0", 2], ["miscounted", "s0", 2, 4], ["s0", 3]]))

    assert totals(found) == NOTHING | {"miscounted": 1}
    assert found.problems("exactly_once") == ["source s0: 1 miscounted of 4 records"]
    assert found.problems("at_least_once") == []


def test_lines_that_are_no_record_of_the_workload_are_unexpected(tmp_path):
    files = complete(part_1_1=[["s9", 0], ["s0", 99], "garbage", ["s0"]])

    found = check(tmp_path, files)

    assert found.unexpected_count == 4
    assert found.problems("at_least_once") == [f"4 unexpected lines, e.g. {found.unexpected[:3]}"]


def test_hidden_files_are_not_output(tmp_path):
    files = complete() | {".part-0-2.pending": [["s0", 0]], ".part-1-1.inprogress": [["s9", 1]]}

    assert totals(check(tmp_path, files)) == NOTHING


# ---- sequence: the checkpoint checker --------------------------------------------------------------


def sequence_cut(root: Path, checkpoint_id: int, *, positions: dict[str, int], counts: dict[str, int],
                 in_flight: list | None = None, mode: str = "exactly_once", in_dicts: bool = False,
                 source_records: int | None = None) -> Path:
    track = {"track": keyed(counts={s: {s: n} for s, n in counts.items()}) if in_dicts else keyed(count=counts)}
    if in_flight:
        track["__channels__"] = channel_state(in_flight)
    extra = {} if source_records is None else {"source_records": source_records}
    return write_checkpoint(root, checkpoint_id, {"sequence#0": {"__source__": positions}, "track#0": track},
                            mode=mode, extra=extra)


def test_a_checkpoint_whose_counts_match_the_source_positions_is_a_consistent_cut(tmp_path):
    sequence_cut(tmp_path, 1, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2})

    assert sequence.check_checkpoints(tmp_path, "exactly_once", splits=SPLITS) == []


def test_records_in_flight_complete_the_counts_of_an_unaligned_cut(tmp_path):
    sequence_cut(tmp_path, 1, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 1, "s1": 2},
                 in_flight=[["s0", 1], ["s0", 2]])

    assert sequence.check_checkpoints(tmp_path, "unaligned", splits=SPLITS) == []


@pytest.mark.parametrize(("counts", "in_flight"), [
    pytest.param({"s0": 2, "s1": 2}, None, id="a record read but neither counted nor in flight"),
    pytest.param({"s0": 3, "s1": 3}, None, id="a record counted but never read"),
    pytest.param({"s0": 1, "s1": 2}, [["s0", 2], ["s0", 1]], id="records in flight out of order"),
    pytest.param({"s0": 2, "s1": 2}, [["s0", 1], ["s0", 2]], id="a record both counted and in flight"),
])
def test_a_checkpoint_that_is_not_a_consistent_cut_is_reported(tmp_path, counts, in_flight):
    sequence_cut(tmp_path, 4, positions={"gen-0": 6, "gen-1": 5}, counts=counts, in_flight=in_flight)

    problems = sequence.check_checkpoints(tmp_path, "exactly_once", splits=SPLITS)

    assert len(problems) == 1 and problems[0].startswith("checkpoint 4: source s"), problems


@pytest.mark.parametrize("in_dicts", [False, True], ids=["counts", "counts in dicts"])
def test_counts_kept_in_a_dict_per_key_are_checked_as_a_cut_too(tmp_path, in_dicts):
    sequence_cut(tmp_path, 1, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2}, in_dicts=in_dicts)
    sequence_cut(tmp_path, 2, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 4, "s1": 2}, in_dicts=in_dicts)

    problems = sequence.check_checkpoints(tmp_path, "exactly_once", splits=SPLITS)

    assert len(problems) == 1 and problems[0].startswith("checkpoint 2: source s0 had read 3 records; Track counted 4")


def test_the_records_a_checkpoint_says_its_sources_read_must_be_those_of_their_positions(tmp_path):
    sequence_cut(tmp_path, 1, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2}, source_records=5)
    sequence_cut(tmp_path, 2, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2}, source_records=10)

    problems = sequence.check_checkpoints(tmp_path, "exactly_once", splits=SPLITS)

    assert problems == ["checkpoint 2: the metadata says the sources had read 10 records; their positions say 5"]


def test_at_least_once_checkpoints_are_not_held_to_the_cut_rules(tmp_path):
    sequence_cut(tmp_path, 1, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 3}, mode="at_least_once")

    assert sequence.check_checkpoints(tmp_path, "at_least_once", splits=SPLITS) == []


def test_a_state_file_that_does_not_match_its_sha256_is_reported_and_never_unpickled(tmp_path):
    directory = sequence_cut(tmp_path, 2, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2})
    state = directory / "track#0.state"
    data = bytearray(state.read_bytes())
    data[-2] ^= 0xFF
    state.write_bytes(bytes(data))

    (found,) = completed_checkpoints(tmp_path)

    assert isinstance(found, Unreadable)
    assert found.reason == "checkpoint 2: chk-000002/track#0.state does not match its SHA-256"
    assert sequence.check_checkpoints(tmp_path, "at_least_once", splits=SPLITS) == [found.reason]


def test_metadata_altered_after_it_was_written_is_reported(tmp_path):
    directory = sequence_cut(tmp_path, 3, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2})
    metadata = directory / "_metadata"
    metadata.write_text(metadata.read_text().replace('"final": false', '"final": true'))

    assert sequence.check_checkpoints(tmp_path, "exactly_once", splits=SPLITS) == [
        "checkpoint 3: _metadata does not match its checksum"]


def test_a_checkpoint_without_metadata_never_completed_and_is_ignored(tmp_path):
    directory = sequence_cut(tmp_path, 5, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 0, "s1": 0})
    (directory / "_metadata").unlink()

    assert list(completed_checkpoints(tmp_path)) == []


# ---- bank: the consistent-cut audit -------------------------------------------------------------------

TRANSFERS = 12


def bank_cut(*, read: int, debit_pending: set[int], credit_pending: set[int]) -> bank.Cut:
    """The cut after the sources read transfers ``0 .. read - 1``: those in ``debit_pending`` still in
    flight to ``Debit``, those in ``credit_pending`` debited and in flight to ``Credit``, the rest
    applied by both."""
    balances: Counter[str] = Counter()
    received: Counter[str] = Counter()
    for i in range(read):
        _, _, payer, payee, amount = bank.transfer(i)
        if i not in debit_pending:
            balances[payer] += amount
            if i not in credit_pending:
                received[payee] += amount
    return bank.Cut(
        checkpoint_id=7, final=False, mode="unaligned",
        positions={f"gen-{k}": k + bank.SPLITS * len(range(k, read, bank.SPLITS)) for k in range(bank.SPLITS)},
        balances={a: bank.OPENING_BALANCE - paid for a, paid in balances.items()}, received=dict(received),
        transfers_in_flight=tuple(bank.transfer(i) for i in sorted(debit_pending)),
        credits_in_flight=tuple(("credit", i, *bank.transfer(i)[3:]) for i in sorted(credit_pending)),
    )


def test_a_cut_with_transfers_and_credits_in_flight_conserves_money():
    cut = bank_cut(read=10, debit_pending={9}, credit_pending={4, 8})

    assert bank.total_in_flight(cut) > 0
    assert sum(cut.money().values()) + bank.total_in_flight(cut) == bank.OPENING_BALANCE * len(bank.ACCOUNTS)
    assert bank.audit(cut, TRANSFERS) == []


def test_a_cut_that_loses_the_credits_in_flight_breaks_conservation():
    cut = bank_cut(read=10, debit_pending={9}, credit_pending={4, 8})
    short = bank.OPENING_BALANCE * len(bank.ACCOUNTS) - bank.total_in_flight(cut)

    problems = bank.audit(replace(cut, credits_in_flight=()), TRANSFERS)

    assert problems[0] == f"checkpoint 7: {short} in the accounts and in flight, expected {bank.OPENING_BALANCE * 16}"


def test_a_transfer_both_applied_and_in_flight_is_reported():
    cut = bank_cut(read=10, debit_pending=set(), credit_pending=set())

    problems = bank.audit(replace(cut, transfers_in_flight=(bank.transfer(3),)), TRANSFERS)

    assert any(" paid " in p for p in problems), problems


def test_a_credit_applied_twice_is_reported():
    cut = bank_cut(read=10, debit_pending=set(), credit_pending=set())
    _, _, _, payee, amount = bank.transfer(2)

    problems = bank.audit(replace(cut, received=cut.received | {payee: cut.received[payee] + amount}), TRANSFERS)

    assert any("in the accounts and in flight" in p for p in problems)
    assert any(f"{payee} received" in p for p in problems), problems


def write_bank_checkpoint(root: Path, checkpoint_id: int, cut: bank.Cut, *, mode: str = "unaligned") -> Path:
    """``cut`` as the engine lays it out: sources, then Debit and Credit tasks with their channel state."""
    debit = {"debit": keyed(balance=cut.balances)}
    credit = {"credit": keyed(received=cut.received), "credited": {"seq": 0, "pending": []}}
    if cut.transfers_in_flight:
        debit["__channels__"] = channel_state(list(cut.transfers_in_flight))
    if cut.credits_in_flight:
        credit["__channels__"] = channel_state(list(cut.credits_in_flight))
    return write_checkpoint(root, checkpoint_id, {"transfers#0": {"__source__": cut.positions}, "debit#0": debit,
                                                  "credit#0": credit}, mode=mode)


def test_the_audit_reads_balances_positions_and_channel_state_from_the_files(tmp_path):
    cut = bank_cut(read=10, debit_pending={9}, credit_pending={4, 8})
    write_bank_checkpoint(tmp_path, 7, cut)

    (read,) = bank.read_cuts(tmp_path)

    assert read == cut
    assert bank.check_checkpoints(tmp_path, "unaligned", TRANSFERS) == []


def test_every_completed_checkpoint_of_the_directory_is_audited(tmp_path):
    good = bank_cut(read=10, debit_pending={9}, credit_pending={4, 8})
    write_bank_checkpoint(tmp_path, 7, good)
    write_bank_checkpoint(tmp_path, 8, replace(good, checkpoint_id=8, credits_in_flight=good.credits_in_flight[:1]))

    problems = bank.check_checkpoints(tmp_path, "unaligned", TRANSFERS)

    assert problems and all(p.startswith("checkpoint 8: ") for p in problems), problems
    assert bank.check_checkpoints(tmp_path, "at_least_once", TRANSFERS) == []


def test_an_unreadable_checkpoint_is_a_problem_in_every_mode(tmp_path):
    directory = write_bank_checkpoint(tmp_path, 7, bank_cut(read=10, debit_pending=set(), credit_pending=set()))
    (directory / "debit#0.state").write_bytes(b"not a pickle")

    (problem,) = bank.check_checkpoints(tmp_path, "at_least_once", TRANSFERS)
    assert problem.startswith("checkpoint 7: chk-000007/debit#0.state has 12 bytes, the metadata says ")


def test_the_bank_output_check_counts_lost_repeated_and_strange_credits(tmp_path):
    out = write_committed(tmp_path / "out", {"part-0-0.jsonl": [0, 1, 2, 2, 5, "x"]})

    problems = bank.check_output(out, "exactly_once", count=6)

    assert problems == ["2 transfers never credited, e.g. ['3', '4']", "1 lines that are no transfer id, e.g. ['\"x\"']",
                        "1 transfers credited more than once"]
    assert bank.check_output(out, "at_least_once", count=6) == problems[:2]


# ---- the checkers on what the engine wrote ---------------------------------------------------------------


def test_the_sequence_checkers_accept_every_checkpoint_and_the_output_of_a_real_unaligned_run(tmp_path):
    result = fs.run(
        sequence.sequence_job(tmp_path / "out", count=4000),
        checkpoints=fs.CheckpointOptions(
            mode="unaligned",
            checkpoint_dir=tmp_path / "chk",
            interval="30ms",
            retained=100,
        ),
        execution=fs.ExecutionOptions(batch_size=64),
    )

    checkpoints = list(completed_checkpoints(tmp_path / "chk"))
    assert len(checkpoints) == result.checkpoints_completed >= 3
    assert all(isinstance(c, Checkpoint) for c in checkpoints)
    assert any(c.in_flight(sequence.TRACK_UID) for c in checkpoints if isinstance(c, Checkpoint)), \
        "no checkpoint persisted records in flight"
    assert sequence.check_checkpoints(tmp_path / "chk", "unaligned") == []
    assert all(isinstance(c, Checkpoint) and c.extra["source_records"] > 0 for c in checkpoints)
    assert checkpoints[-1].extra["source_records"] == 4000  # type: ignore[union-attr]
    assert totals(sequence.check_output(tmp_path / "out", count=4000)) == NOTHING


def test_a_malformed_task_list_is_reported_not_raised(tmp_path):
    directory = sequence_cut(tmp_path, 6, positions={"gen-0": 6, "gen-1": 5}, counts={"s0": 3, "s1": 2})
    metadata = json.loads((directory / "_metadata").read_text())
    body = {k: v for k, v in metadata.items() if k != "checksum"}
    del body["tasks"][0]["handle"]["sha256"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    (directory / "_metadata").write_text(json.dumps({**body, "checksum": hashlib.sha256(canonical).hexdigest()}))

    (found,) = completed_checkpoints(tmp_path)

    assert isinstance(found, Unreadable) and "malformed task list (KeyError" in found.reason


# ---- the oracles share no code with the engine -----------------------------------------------------------

ENGINE = ("flowstate.storage", "flowstate.state", "flowstate.runner", "flowstate.executors", "flowstate.task",
          "flowstate.operators", "flowstate.transport", "flowstate.control", "flowstate.checkpoint", "flowstate.connectors")


@pytest.mark.parametrize("module", ["checkpoints", "sequence", "bank"])
def test_an_oracle_module_imports_nothing_of_the_engine(module):
    """The workloads are built with the public API (``import flowstate``); the checkers read files
    with the standard library only."""
    source = Path(oracles.__file__).with_name(f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)

    assert not [name for name in imported if name.startswith(ENGINE)], imported
    if module == "checkpoints":
        assert not [name for name in imported if name.startswith("flowstate")], imported
