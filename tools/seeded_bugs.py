"""Plant known bugs in a copy of flowstate, one at a time, and check that the test suite catches each.

A test suite that passes proves little unless it fails when the code is wrong. Each entry of
``CATALOGUE`` is a bug a checkpointing engine can plausibly ship: an fsync skipped, an ack sent too
early, a channel not blocked, a commit that is not idempotent. For each, this script

1. copies the repository (``src``, ``tests``, ``pyproject.toml``) into a temporary directory,
2. applies the bug's edits to the copy (each edit must match the source exactly once, so a stale
   catalogue fails loudly instead of planting nothing),
3. runs the test files that should catch it (``pytest -x``) with the copy first on ``PYTHONPATH``,
4. records whether some test failed (caught) or all passed (missed).

Before any bug, the same test selections run on an unmodified copy: they must pass, or a failure
would prove nothing. The result table goes to stdout and, with ``--write``, into
``docs/reliability.md`` between ``<!-- seeded:begin -->`` and ``<!-- seeded:end -->``.

Usage: ``python tools/seeded_bugs.py [--only NAME ...] [--write]`` (about 10 minutes on 2 cores).
Exit status: 0 when every bug was caught, 1 otherwise, 2 when the catalogue no longer applies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- seeded:begin -->", "<!-- seeded:end -->"


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    """Test files or node ids expected to catch the bug."""


def bug(name: str, description: str, tests: tuple[str, ...], *edits: tuple[str, str, str]) -> Bug:
    return Bug(name, description, tuple(Edit(*e) for e in edits), tests)


STORAGE = "src/flowstate/storage/local.py"
TASK = "src/flowstate/task/task.py"
SOURCE = "src/flowstate/task/source.py"
SNAPSHOT = "src/flowstate/task/snapshot.py"
SHELL = "src/flowstate/runner/shell.py"

CATALOGUE: tuple[Bug, ...] = (
    bug(
        "no-directory-fsync", "skip the fsync of a directory after a rename",
        ("tests/storage",),
        (STORAGE, "def _fsync_directory(directory: Path) -> None:\n",
         "def _fsync_directory(directory: Path) -> None:\n    return\n"),
    ),
    bug(
        "ack-before-write", "acknowledge a snapshot before its state file is durable",
        ("tests/engine/test_crash_recovery.py",),
        (SNAPSHOT, "            t0 = env.clock.monotonic()\n            operators: dict[str, Any] = {}",
         "            env.reports.put(Ack(self.task_id, cid, TaskState(self.task_id, self.vertex, self.subtask, None)))\n"
         "            return\n"
         "            t0 = env.clock.monotonic()\n            operators: dict[str, Any] = {}"),
    ),
    bug(
        "metadata-before-all-acks", "complete a checkpoint when all acks but one arrived",
        ("tests/protocol/test_coordinator.py",),
        ("src/flowstate/checkpoint/pending.py",
         "    def fully_acknowledged(self) -> bool:\n        return not self.not_yet_acknowledged",
         "    def fully_acknowledged(self) -> bool:\n        return len(self.not_yet_acknowledged) <= 1"),
    ),
    bug(
        "notify-before-metadata", "notify tasks of completion before the metadata is durable",
        ("tests/runner/test_shell.py", "tests/engine/test_checkpoint_order.py", "tests/engine/test_crash_recovery.py"),
        (SHELL, "                    if fp:\n                        fp.hit(fpn.COORDINATOR_BEFORE_METADATA)\n",
         "                    for t in self.tasks.values():\n"
         "                        t.post(Complete(checkpoint.checkpoint_id, checkpoint.final))\n"
         "                    if fp:\n                        fp.hit(fpn.COORDINATOR_BEFORE_METADATA)\n"),
    ),
    bug(
        "no-channel-block", "do not block a channel after its barrier arrived",
        ("tests/protocol/test_alignment.py",),
        ("src/flowstate/checkpoint/alignment.py", "[BlockChannel(channel)]", "[]"),
    ),
    bug(
        "tracker-in-exactly-once", "align nothing in exactly_once mode (use the at-least-once tracker)",
        ("tests/engine/test_crash_recovery.py",),
        (TASK, "        return AlignedBarrierHandler(num_channels)", "        return BarrierTracker(num_channels)"),
    ),
    bug(
        "source-offsets-after-barrier", "take a source's offsets after its barrier went downstream",
        ("tests/engine/test_crash_recovery.py",),
        (SNAPSHOT, "            state = TaskStateFile(operators, snapshot.source,",
         "            state = TaskStateFile(operators, getattr(snapshot.source, 'late', lambda: snapshot.source)(),"),
        (SOURCE, "                position = self.reader.snapshot()\n",
         "                reader = self.reader\n"
         "                position = type('Late', (), {'late': lambda _self: reader.snapshot()})()\n"),
    ),
    bug(
        "non-idempotent-commit", "a sink commit publishes under a new name each time it runs",
        ("tests/connectors/test_file_sink.py",),
        ("src/flowstate/connectors/file_sink.py",
         "            final = pending[1:-len(_PENDING)] + self._suffix\n",
         "            final = pending[1:-len(_PENDING)] + f'.{os.urandom(4).hex()}' + self._suffix\n"),
        ("src/flowstate/connectors/file_sink.py",
         "            if self._failpoints:\n                self._failpoints.hit(fpn.SINK_MID_COMMIT)\n"
         "            os.unlink(source)\n",
         "            if self._failpoints:\n                self._failpoints.hit(fpn.SINK_MID_COMMIT)\n"),
    ),
    bug(
        "commit-uncompleted", "a completed checkpoint also commits output pre-committed for later ones",
        ("tests/protocol/test_commit.py",),
        ("src/flowstate/checkpoint/commit.py", "commit = [c for cid, c in self.pending if cid <= checkpoint_id]",
         "commit = [c for cid, c in self.pending]"),
    ),
    bug(
        "restore-unvalidated", "restore the newest checkpoint without validating it",
        ("tests/storage", "tests/protocol/test_restore.py"),
        ("src/flowstate/checkpoint/restore.py", "            case Invalid():\n                skipped.append(candidate)",
         "            case Invalid():\n                return RestoreFrom(candidate.checkpoint_id, None, tuple(skipped))"),
    ),
    bug(
        "restore-oldest", "restore the oldest valid checkpoint instead of the newest",
        ("tests/protocol/test_restore.py",),
        ("src/flowstate/checkpoint/restore.py", "            case Valid(checkpoint_id=cid, metadata=metadata):\n"
         "                return Chosen(cid, metadata, tuple(skipped))",
         "            case Valid(checkpoint_id=cid, metadata=metadata):\n"
         "                oldest = Chosen(cid, metadata, tuple(skipped))\n                continue"),
    ),
    bug(
        "randomized-key-hash", "partition keys with Python's per-process randomized hash()",
        ("tests/engine/test_graph_validation.py",),
        ("src/flowstate/state/keygroups.py", "    return ((crc32(data) * GOLDEN) & 0xFFFFFFFF) * max_parallelism >> 32",
         "    return (hash(key) & 0xFFFFFFFF) * max_parallelism >> 32"),
    ),
    bug(
        "unaligned-drops-overtaken", "an unaligned checkpoint does not persist the data its barrier overtook",
        ("tests/engine/test_unaligned.py",),
        (TASK, "                    if self._capture is not None and overtaken:\n"
         "                        self._record(self._capture, ch, overtaken)",
         "                    pass"),
    ),
    bug(
        "shared-file-freed-early", "free a shared file when the first checkpoint referencing it is discarded",
        ("tests/storage/test_registry.py",),
        ("src/flowstate/storage/registry.py", "            count = self._counts[path] - 1\n            if count:",
         "            count = 0\n            if count:"),
    ),
    bug(
        "heap-snapshot-shares-lists", "a heap snapshot shares list entries that the task changes in place afterwards",
        ("tests/state",),
        ("src/flowstate/state/heap_tables.py",
         "            entry = self._top[key] = [] if found is _ABSENT else [private(item) for item in found]",
         "            entry = self._top[key] = [] if found is _ABSENT else found"),
    ),
    bug(
        "rescale-keeps-own-range", "a rescaled subtask restores only the old snapshot with its own index",
        ("tests/engine/test_state_assignment.py",),
        ("src/flowstate/task/assignment.py", "        for i in targets:\n            out[i].append(part)",
         "        for i in targets:\n            if i == subtask:\n                out[i].append(part)"),
    ),
    bug(
        "stop-the-world-no-pause", "stop_the_world keeps its sources running during a checkpoint",
        ("tests/engine/test_checkpoint_order.py", "tests/engine/test_engine.py"),
        (SOURCE, "                self._paused_for = mail.barrier.checkpoint_id", "                pass"),
    ),
    bug(
        "postgres-recommit-not-idempotent", "PostgresSink writes a checkpoint's rows again when it re-commits after a restore",
        ("tests/connectors/test_postgres_sink.py",),
        ("src/flowstate/connectors/postgres.py",
         "if found is not None and found[0] == lineage and found[1] >= cid:",
         "if False:"),
    ),
    bug(
        "cdc-slot-advanced-before-completion", "PostgresCdcSource advances its slot when the checkpoint is taken, not when it completes",
        ("tests/connectors/test_postgres_cdc.py",),
        ("src/flowstate/connectors/postgres_cdc.py",
         "        self._remembered[checkpoint_id] = self._done\n        return self.snapshot()",
         "        self._remembered[checkpoint_id] = self._done\n        self.notify_complete(checkpoint_id)\n"
         "        return self.snapshot()"),
    ),
    bug(
        "cdc-snapshot-changes-kept", "a CDC restore mid-snapshot keeps the changes its fresh snapshot already holds",
        ("tests/connectors/test_postgres_cdc_snapshot.py",),
        ("src/flowstate/connectors/postgres_cdc.py",
         "                    if self._segments and commit < self._segments[-1][2]:",
         "                    if False:"),
    ),
    bug(
        "cdc-snapshot-restarted", "a CDC restore mid-snapshot reads the tables again from the start",
        ("tests/connectors/test_postgres_cdc_snapshot.py",),
        ("src/flowstate/connectors/postgres_cdc.py",
         "                    self._segments = [*self._segments, (*self._reading, exported.point)]",
         "                    self._segments, self._reading = [(0, None, exported.point)], (0, None)"),
    ),
    bug(
        "journal-released-before-completion", "the ingress journal releases records when a checkpoint is taken, not when it completes",
        ("tests/connectors/test_journal.py",),
        ("src/flowstate/connectors/ingress.py",
         "        self._remembered[checkpoint_id] = self._next\n        return self.snapshot()",
         "        self._remembered[checkpoint_id] = self._next\n        self.notify_complete(checkpoint_id)\n"
         "        return self.snapshot()"),
    ),
    bug(
        "journal-acknowledges-before-upload", "the ingress journal acknowledges an append before the segment holding it is uploaded",
        ("tests/connectors/test_journal.py",),
        ("src/flowstate/connectors/journal.py",
         "            while not mine.done:\n",
         "            while not mine.done and mine.first < 0:\n"),
    ),
    bug(
        "postgres-fresh-start-over-committed-rows", "PostgresSink starts without a checkpoint into a table holding committed rows",
        ("tests/connectors/test_postgres_sink.py",),
        ("src/flowstate/connectors/postgres.py",
         'if markers and sink._mode == "insert":',
         "if False:"),
    ),
    bug(
        "tasks-ignore-resume-state", "tasks ignore their resume state: every attempt starts its tasks from scratch",
        ("tests/engine/test_crash_recovery.py", "tests/engine/test_attempt_plan.py"),
        ("src/flowstate/task/factory.py",
         "            resume = states.get(tid, TaskStateFile()) if states is not None else None",
         "            resume = None"),
    ),
)

# ---- broker connectors: caught by the conformance kit against the real servers ----------------------
REDIS = "src/flowstate/connectors/redis_streams.py"
NATS = "src/flowstate/connectors/nats.py"

CATALOGUE += (
    bug(
        "redis-ack-before-completion", "a Redis group reader acknowledges (XACK) at the barrier, before the checkpoint completes",
        ("tests/connectors/test_redis_streams.py",),
        (REDIS, "            self._to_ack.append((checkpoint_id, self._read))\n            self._read = {}\n",
         "            self._to_ack.append((checkpoint_id, self._read))\n            self._read = {}\n"
         "            self.notify_complete(checkpoint_id)\n"),
    ),
    bug(
        "redis-recommit-not-idempotent", "the Redis sink's commit script appends a batch without checking the marker",
        ("tests/connectors/test_redis_streams.py",),
        (REDIS, "if checkpoint <= last then return -1 end\n", ""),
    ),
    bug(
        "nats-recommit-not-idempotent", "the NATS sink publishes without a Nats-Msg-Id, so a re-publish is not deduplicated",
        ("tests/connectors/test_nats.py",),
        (NATS, '(p, {"Nats-Msg-Id": message_id(identity, checkpoint_id, k)}) for k, p in enumerate(payloads)]',
         "(p, None) for p in payloads]"),
    ),
    bug(
        "kafka-recommit-ignores-marker", "the Kafka sink publishes a restored batch again although its marker is committed",
        ("tests/connectors/test_kafka.py",),
        ("src/flowstate/connectors/kafka.py", "        if self._committed.get(identity, 0) >= checkpoint_id:\n            return",
         "        if False:\n            return"),
    ),
    bug(
        "kafka-offsets-committed-at-barrier", "a Kafka reader commits its group's offsets on the barrier, before completion",
        ("tests/connectors/test_kafka.py",),
        ("src/flowstate/connectors/kafka.py", "        self._to_commit.append((checkpoint_id, dict(self._next)))\n",
         "        self._to_commit.append((checkpoint_id, dict(self._next)))\n        self.notify_complete(checkpoint_id)\n"),
    ),
    bug(
        "redis-position-after-barrier", "a Redis reader reads ahead and its position counts entries fetched but not yet emitted",
        ("tests/connectors/test_redis_streams.py",),
        (REDIS, "count=max(1, max_records // len(active)),", "count=max_records,"),
        (REDIS, "                    staged.append((state, self._take(state, got, records)))\n",
         "                    taken = self._take(state, got, records)\n"
         "                    staged.append((state, (self._take(state, by_key[state.key], [])[0], *taken[1:])))\n"),
    ),
    bug(
        "nats-position-after-barrier", "a NATS reader's position skips past the last record it emitted",
        ("tests/connectors/test_nats.py",),
        (NATS, "            nxt = seq + 1\n", "            nxt = seq + 2\n"),
    ),
    bug(
        "heap-snapshot-shares-values", "the heap hands out a value object of a frozen snapshot layer, which the task "
        "then changes in place (issue 10: acc = s.value(); acc['n'] += 1)",
        ("tests/state",),
        ("src/flowstate/state/heap_tables.py",
         "        if found is _ABSENT:\n            return found\n        entry = private(found)\n",
         "        if found is _ABSENT:\n            return found\n        entry = found\n"),
        ("src/flowstate/state/heap_tables.py",
         "        if type(found) in _IMMUTABLE:\n            return found\n        entry = private(found)\n",
         "        if type(found) in _IMMUTABLE:\n            return found\n        entry = found\n"),
    ),
    bug(
        "heap-delta-drops-deletes", "an incremental heap snapshot writes the keys changed since the last one but "
        "not those deleted, so a restore from a chain brings deleted keys back",
        ("tests/state/test_heap_chain.py",),
        ("src/flowstate/state/heap_chain.py",
         "            gone = _encoded_chunks({k: None for k in deleted}, chunk_entries) if deleted else []\n",
         "            gone = []\n"),
    ),
    bug(
        "buffer-values-msgpacked", "RocksDB rows encode a bytearray (any buffer) with msgpack, which gives it "
        "back as bytes: a restored value changes type",
        ("tests/state/test_codec.py",),
        ("src/flowstate/state/codec.py",
         "        if t is not int and t is not str and t is not float and not plain_data((value,)):\n",
         "        if False:\n"),
    ),
    bug(
        "buffer-values-marshalled", "an incremental heap snapshot encodes a bytearray (any buffer) with marshal, "
        "which gives it back as bytes: a restored value changes type",
        ("tests/state/test_heap_chain.py",),
        ("src/flowstate/state/heap_chain.py",
         "    if plain_data(entries.values()) and plain_data(entries.keys()):\n",
         "    if True:\n"),
    ),
    bug(
        "prefetch-skips-frozen-layers", "a RocksDB prefetch reads rows missing from the cache from RocksDB without "
        "looking in the frozen layers, whose newer values have not reached RocksDB yet",
        ("tests/state/test_rocksdb_prefetch.py",),
        ("src/flowstate/state/rocksdb/cache.py",
         "        layers = self.frozen  # read once: a layer leaves it only after its rows reached RocksDB\n        if layers:\n",
         "        layers = self.frozen  # read once: a layer leaves it only after its rows reached RocksDB\n        if False:\n"),
    ),
    bug(
        "heap-untracked-read", "the incremental heap does not count a mutable value it hands out as changed, so "
        "a change made in place to it is missing from the next delta",
        ("tests/state/test_heap_chain.py", "tests/state/test_snapshot_model.py"),
        ("src/flowstate/state/heap_tables.py",
         "        entry = self._top.get(key, self._default)  # an immutable default\n        if type(entry) not in _IMMUTABLE:\n",
         "        entry = self._top.get(key, self._default)  # an immutable default\n        if False:\n"),
    ),
)

# ---- committed output is never written twice ------------------------------------------------------
CATALOGUE += (
    bug(
        "restart-from-scratch-after-unrestorable",
        "a from-scratch restart after an unrestorable checkpoint, beside the output it committed",
        ("tests/engine/test_restore_safety.py", "tests/protocol/test_restore.py"),
        ("src/flowstate/checkpoint/restore.py",
         "            if corrupt:\n                return Refuse(RefusalReason.NONE_RESTORABLE, _none_restorable(corrupt, facts))\n"
         "            return _start_fresh(discards, facts)\n",
         "            return StartFresh(discards)\n"),
    ),
    bug(
        "sink-overwrites-committed", "a sink that overwrites committed files: names without a writer id, publish by rename",
        ("tests/engine/test_restore_safety.py", "tests/connectors/test_file_sink.py"),
        ("src/flowstate/connectors/file_sink.py",
         'return f".{self._prefix}-{self._subtask}-{seq}.{self._writer_id}{kind}"',
         'return f".{self._prefix}-{self._subtask}-{seq}{kind}"'),
        ("src/flowstate/connectors/file_sink.py", "                os.link(source, target)\n",
         "                os.rename(source, target)\n                continue\n"),
    ),
    bug(
        "timers-not-restored", "a restored keyed operator does not rebuild its timers from the state backend",
        ("tests/eventtime/test_timers_operator.py",),
        ("src/flowstate/operators/timers.py", "        for key in list(backend.state_keys(TIMERS_STATE)):",
         "        for key in []:"),
    ),
    bug(
        "no-final-watermark", "a bounded source ends without a watermark at +inf, so its last windows "
        "fire only after the final checkpoint",
        ("tests/eventtime/test_time_end_to_end.py",),
        (SOURCE, "                self._emit_watermark(0, FINAL_WATERMARK)\n", ""),
    ),
    bug(
        "idle-split-holds-back", "an idle split keeps holding the watermark back",
        ("tests/eventtime/test_watermarks.py", "tests/eventtime/test_time_end_to_end.py"),
        ("src/flowstate/time/watermarks.py", "            if timeout is None or now - seen < timeout:",
         "            if True:"),
    ),
)

# ---- early window results, window joins, the journaled socket ----------------------------------------
CATALOGUE += (
    bug(
        "socket-journal-bypassed", "a journaled socket source reads the connection directly, journaling nothing",
        ("tests/connectors/test_journal.py",),
        ("src/flowstate/connectors/socket.py", "        if self._journal is not None:\n            from flowstate",
         "        if False:\n            from flowstate"),
    ),
    bug(
        "window-join-one-side-once", "a window join pairs each left record with the first right record only",
        ("tests/eventtime/test_window_join.py",),
        ("src/flowstate/windowed.py", "        right = [r for side, r in tagged if side == 1]\n",
         "        right = [r for side, r in tagged if side == 1][:1]\n"),
    ),
    bug(
        "early-count-forgotten-between-batches", "a window's early count starts again at every batch",
        ("tests/eventtime/test_early_firing.py",),
        ("src/flowstate/operators/windows.py", "            counts.put(window, seen)\n",
         "            counts.put(window, 0)\n"),
    ),
)


# ---- state time-to-live -----------------------------------------------------------------------------
TTL = "src/flowstate/state/ttl_rules.py"
TTL_STATES = "src/flowstate/state/ttl_states.py"
CATALOGUE += (
    bug(
        "ttl-snapshot-keeps-expired", "a keyed operator snapshots its state without removing the entries that "
        "expired since the last batch, so a checkpoint holds expired entries",
        ("tests/eventtime/test_ttl_end_to_end.py",),
        ("src/flowstate/operators/base.py",
         "        if self.ttl:\n            self.ttl.cleanup()  # no checkpoint holds an entry that had expired at its barrier\n",
         ""),
    ),
    bug(
        "ttl-never-removed", "expired entries are hidden from reads but never removed, so state grows without end",
        ("tests/eventtime/test_ttl_end_to_end.py",),
        (TTL, "        while heap and heap[0][0] <= upto:\n", "        while False:\n"),
    ),
    bug(
        "ttl-event-time-by-watermark-only", "event-time visibility ignores the record's timestamp and uses the "
        "watermark alone, so what a record sees depends on where the watermarks fell",
        ("tests/eventtime/test_ttl_end_to_end.py",),
        (TTL, "        if ts is None or ts < watermark or ctx.timer_domain == \"processing_time\":\n",
         "        if True:\n"),
    ),
    bug(
        "ttl-index-not-restored", "a restored ttl state does not rebuild its expiry index, so restored entries "
        "are never removed nor counted",
        ("tests/state/test_ttl.py", "tests/eventtime/test_ttl_end_to_end.py"),
        (TTL_STATES, "            for key in list(backend.state_keys(self._name)):\n", "            for key in []:\n"),
    ),
)

# ---- the joins and state ttl under SIGKILL (chaos workloads) ----------------------------------------
CATALOGUE += (
    bug(
        "interval-join-forgets-buffered-side", "a restored interval join starts its buffered left side empty: "
        "orders buffered at the checkpoint never meet the payments that come after the restore",
        ("tests/testing/test_joins_chaos.py",),
        ("src/flowstate/operators/joins.py",
         "        self.sides = (self.backend.map_state(LEFT_STATE), self.backend.map_state(RIGHT_STATE))\n",
         "        left = LEFT_STATE if resume_state is None else LEFT_STATE + \"-after-restore\"\n"
         "        self.sides = (self.backend.map_state(left), self.backend.map_state(RIGHT_STATE))\n"),
    ),
    bug(
        "ttl-write-time-not-restored", "a restored ttl value keeps its ttl but not the time it was written "
        "(its expiry becomes the ttl after the epoch), so every restored entry has expired",
        ("tests/testing/test_ttl_chaos.py",),
        (TTL_STATES, "    def _index_current(self, key: Any) -> None:\n"
              "        self._index.set(key, _check_entry(self._name, self._inner.value()))\n",
         "    def _index_current(self, key: Any) -> None:\n"
         "        _check_entry(self._name, self._inner.value())\n"
         "        self._inner.update((self._inner.value()[0], float(self._ttl)))\n"
         "        self._index.set(key, float(self._ttl))\n"),
    ),
)

# ---- the vectorized path: caught by its crash and rescale tests ---------------------------------------
CATALOGUE += (
    bug(
        "arrow-accumulators-not-restored", "a restored keyed aggregation of record batches starts its "
        "accumulators empty (it reads another state than the one its snapshot holds)",
        ("tests/engine/test_arrow.py",),
        ("src/flowstate/operators/arrow.py",
         '        super().open(resume_state)\n        self.state = self.backend.value_state("acc")\n',
         '        super().open(resume_state)\n'
         '        self.state = self.backend.value_state("acc" if resume_state is None else "acc-lost")\n'),
    ),
    bug(
        "arrow-in-flight-not-split", "in-flight record batches of an unaligned checkpoint restored at another "
        "parallelism go to the subtask that held them, not to the subtasks of their rows' keys",
        ("tests/engine/test_arrow.py",),
        ("src/flowstate/task/assignment.py",
         '            split = getattr(key_fn, "split_batch", None)  # a key of record batches',
         '            split = None and getattr(key_fn, "split_batch", None)  # a key of record batches'),
    ),
)

def _copy_tree(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis")
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")


def _apply(copy: Path, edits: tuple[Edit, ...]) -> str | None:
    """Apply ``edits``; the first one that does not match exactly once is returned as a problem."""
    for edit in edits:
        path = copy / edit.path
        text = path.read_text()
        count = text.count(edit.old)
        if count != 1:
            return f"{edit.path}: the text to replace occurs {count} times (expected once): {edit.old[:60]!r}"
        path.write_text(text.replace(edit.old, edit.new))
    return None


def _run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str, float]:
    """(passed, last lines of the output, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_")}
    env["PYTHONPATH"] = str(copy / "src")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
            cwd=copy, env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, "timed out", time.monotonic() - started
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return done.returncode == 0, tail, time.monotonic() - started


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("FAILED ") or line.startswith("ERROR "):
            return line.split(" ", 1)[1].split(" - ")[0]
    return output.splitlines()[-1] if output else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the bugs to plant (default: all)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/reliability.md")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test run (default 600)")
    args = parser.parse_args(argv)
    bugs = [b for b in CATALOGUE if not args.only or b.name in args.only]
    if args.only and len(bugs) != len(args.only):
        known = ", ".join(b.name for b in CATALOGUE)
        print(f"unknown bug name among {args.only}; known: {known}", file=sys.stderr)
        return 2

    selections = sorted({t for b in bugs for t in b.tests})
    with tempfile.TemporaryDirectory(prefix="flowstate-seeded-") as tmp:
        control = Path(tmp) / "control"
        _copy_tree(control)
        print(f"control run of {len(selections)} test selection(s) on the unmodified source ...", flush=True)
        passed, tail, seconds = _run_tests(control, tuple(selections), args.timeout)
        if not passed:
            print(f"the unmodified source fails its tests; nothing can be concluded:\n{tail}", file=sys.stderr)
            return 2
        print(f"  passed in {seconds:.0f} s", flush=True)

        rows: list[tuple[str, str, str, str, float]] = []
        stale = False
        for i, planted in enumerate(bugs, 1):
            copy = Path(tmp) / planted.name
            _copy_tree(copy)
            problem = _apply(copy, planted.edits)
            if problem is not None:
                print(f"[{i}/{len(bugs)}] {planted.name}: catalogue out of date: {problem}", file=sys.stderr)
                rows.append((planted.name, planted.description, "NOT APPLIED", problem, 0.0))
                stale = True
                continue
            passed, tail, seconds = _run_tests(copy, planted.tests, args.timeout)
            verdict = "missed" if passed else "caught"
            caught_by = "" if passed else _first_failure(tail)
            print(f"[{i}/{len(bugs)}] {planted.name}: {verdict} in {seconds:.0f} s {caught_by}", flush=True)
            rows.append((planted.name, planted.description, verdict, caught_by, seconds))
            shutil.rmtree(copy, ignore_errors=True)

    caught = sum(1 for r in rows if r[2] == "caught")
    table = [
        f"{caught} of {len(rows)} planted bugs caught (`python tools/seeded_bugs.py --write`).",
        "",
        "| bug | what is planted | result | first failing test | seconds |",
        "|---|---|---|---|---|",
        *(f"| `{n}` | {d} | **{v}** | `{t}` | {s:.0f} |" if t else f"| `{n}` | {d} | **{v}** | | {s:.0f} |"
          for n, d, v, t, s in rows),
    ]
    print("\n".join(table))
    if args.write:
        doc = ROOT / "docs" / "reliability.md"
        text = doc.read_text() if doc.exists() else "# Reliability\n"
        block = f"{BEGIN}\n" + "\n".join(table) + f"\n{END}"
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n## Seeded bugs\n\n" + block + "\n"
        doc.write_text(text)
    if stale:
        return 2
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
