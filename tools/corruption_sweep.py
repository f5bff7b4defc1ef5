"""Corrupt the newest checkpoint in every way this script knows and check that a restore never uses it.

A job (word count, RocksDB state, incremental checkpoints, two retained) leaves two completed
checkpoints. Then, one corruption at a time on a fresh copy of that directory:

- the newest ``_metadata`` truncated at every byte offset;
- every bit of the newest ``_metadata`` flipped, one at a time;
- in every state file and shared file the newest checkpoint references: a bit flipped at sampled
  offsets (first, last and up to 64 spread between), a 4 KiB block zeroed, the file truncated by one
  byte, the file deleted.

After each, the storage's validated candidates (newest first) must skip the newest checkpoint with
a reason and find the older one valid; a corrupted shared file that the older checkpoint references
too must make it skip both. And the engine's restore decision (``plan_restore``, with the sink's
committed output as the job left it) must refuse: to fall back to the older checkpoint past the
newest one, whose output the sink committed, or, when neither is valid, to start from scratch; its
message must name the newest checkpoint. A corruption that is restored from, or that a run would
silently go past, is a miss. The counts go to stdout and, with ``--write``, into ``docs/reliability.md`` between
``<!-- corruption:begin -->`` and ``<!-- corruption:end -->``.

Usage: ``python tools/corruption_sweep.py [--write]`` (a minute or two).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import flowstate as fs
from flowstate.checkpoint.restore import (
    Chosen,
    CommittedOutput,
    RefusalReason,
    Refuse,
    RestoreFacts,
    choose,
    plan_restore,
)
from flowstate.storage.local import LocalCheckpointStorage

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- corruption:begin -->", "<!-- corruption:end -->"


def make_checkpoints(work: Path) -> Path:
    def words(i: int) -> str:
        return " ".join(f"w{(i * 7 + k) % 5000}" for k in range(4))

    flow = fs.Dataflow("sweep", parallelism=2)
    lines = flow.source(fs.GeneratorSource(words, 40_000, splits=2, rate=40_000.0), name="lines")
    counted = lines.flat_map(str.split).key_by(lambda w: w).reduce(lambda a, b: a, uid="count")
    counted.sink(fs.FileSink(str(work / "out")), uid="out")
    (work / "out").mkdir(parents=True)
    chk = work / "chk"
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=chk, interval="100ms", retained=2),
        state=fs.StateOptions(backend="rocksdb", directory=work / "rocksdb"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    return chk


def restore_choice(
    chk: Path, committed: tuple[CommittedOutput, ...] = (),
) -> tuple[int | None, list[str], RefusalReason | None, str]:
    """The newest valid checkpoint (``None``: none), the reasons of the newer ones skipped, and the
    restore decision's refusal reason and message (``None`` and ``""``: it did not refuse)."""
    candidates = list(LocalCheckpointStorage(chk).restore_candidates())  # validated once, for both
    decision = choose(candidates)
    chosen = int(decision.checkpoint_id) if isinstance(decision, Chosen) else None
    planned = plan_restore(candidates, RestoreFacts(str(chk), committed))
    refused, message = (planned.reason, planned.message) if isinstance(planned, Refuse) else (None, "")
    return chosen, [s.reason for s in decision.skipped], refused, message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flowstate-corruption-") as tmp:
        work = Path(tmp)
        pristine = make_checkpoints(work)
        storage = LocalCheckpointStorage(pristine)
        completed = [i.metadata for i in storage.list_checkpoints() if i.metadata is not None]
        older, newest = completed[-2], completed[-1]
        older_files = {h.path for t in older.tasks for h in ([t.handle] if t.handle else []) + list(t.shared)}
        output = fs.FileSink(str(work / "out"))
        committed = (CommittedOutput("out", output.directory, output.committed_output()),)
        assert committed[0].items, "the job committed no output"
        good, _, refused, _ = restore_choice(pristine, committed)
        assert good == newest.checkpoint_id and refused is None, (good, newest.checkpoint_id, refused)
        copy = work / "copy"
        counts: Counter[str] = Counter()
        missed: list[str] = []

        def trial(kind: str, target: str, corrupt: Callable[[Path], None]) -> None:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(pristine, copy)
            corrupt(copy / target)
            chosen, reasons, refused, message = restore_choice(copy, committed)
            expected = None if target in older_files else older.checkpoint_id
            expected_refusal = (RefusalReason.NONE_RESTORABLE if expected is None
                                else RefusalReason.FALLBACK_PAST_COMMITTED)
            counts[f"{kind} total"] += 1
            if (chosen == expected and reasons and refused is expected_refusal
                    and f"checkpoint {newest.checkpoint_id}: " in message):
                counts[f"{kind} detected"] += 1
            else:
                missed.append(f"{kind} on {target}: found {chosen} valid (expected {expected}); "
                              f"decision {refused} (expected {expected_refusal})")

        metadata = f"chk-{newest.checkpoint_id:06d}/_metadata"
        raw = (pristine / metadata).read_bytes()
        for offset in range(len(raw)):
            trial("metadata truncated", metadata, lambda p, n=offset: p.write_bytes(raw[:n]))
        for bit in range(len(raw) * 8):
            def flip(p: Path, bit: int = bit) -> None:
                data = bytearray(raw)
                data[bit // 8] ^= 1 << (bit % 8)
                p.write_bytes(bytes(data))
            trial("metadata bit flipped", metadata, flip)
        files = [t.handle.path for t in newest.tasks if t.handle] + [h.path for t in newest.tasks for h in t.shared]
        for path in files:
            size = (pristine / path).stat().st_size
            offsets = sorted({0, size - 1, *range(0, size, max(1, size // 64))})
            for offset in offsets:
                def flip_file(p: Path, offset: int = offset) -> None:
                    data = bytearray(p.read_bytes())
                    data[offset] ^= 0x10
                    p.write_bytes(bytes(data))
                trial("file bit flipped", path, flip_file)

            def zero_block(p: Path) -> None:
                data = bytearray(p.read_bytes())
                start = len(data) // 3
                data[start:start + 4096] = bytes(len(data[start:start + 4096]))
                p.write_bytes(bytes(data))
            trial("file 4 KiB zeroed", path, zero_block)
            trial("file truncated by a byte", path, lambda p: p.write_bytes(p.read_bytes()[:-1]))
            trial("file deleted", path, lambda p: p.unlink())

    kinds = sorted({k.rsplit(" ", 1)[0] for k in counts})
    total = sum(counts[f"{k} total"] for k in kinds)
    detected = sum(counts[f"{k} detected"] for k in kinds)
    lines = [
        f"{detected:,} of {total:,} corruptions detected (`python tools/corruption_sweep.py --write`): the "
        "restore skipped the corrupted checkpoint with a reason, found the previous one valid (unless it shared "
        "the damaged file), and refused to start: to go back past the corrupted checkpoint, whose output the "
        "sink had committed, or from scratch "
        f"({len(files)} files of the newest checkpoint: {sum(1 for f in files if f.startswith('shared/'))} "
        "shared SST files and the task state files).",
        "",
        "| corruption | tried | detected |",
        "|---|---|---|",
        *(f"| {k} | {counts[f'{k} total']:,} | {counts[f'{k} detected']:,} |" for k in kinds),
    ]
    print("\n".join(lines))
    for line in missed[:20]:
        print("MISSED:", line, file=sys.stderr)
    if args.write:
        doc = ROOT / "docs" / "reliability.md"
        text = doc.read_text()
        block = f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Corruption sweep\n\n" + block + "\n"
        doc.write_text(text)
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
