"""The chaos runner: kill a job again and again, and prove that what it committed is what a run
without failures commits.

Every run is a process of its own (``python -m flowstate.testing._child``) whose ``FileSink`` outputs
and checkpoints go to the directory of its *job*: a job is one sequence of runs, killed and started
again, until one run completes. Per mode, in this order:

Step 1: the **reference**: one run without failure, from scratch. Its committed output (the multiset
        of lines of every ``FileSink``, and of the records of every sink offering
        ``committed_records()``, read back from its server once the run completed) is what every job must
        commit; its duration scales the random
        kill delays. Every failpoint of ``flowstate.failpoints.KNOWN`` counts its hits in it (action
        ``kill%0``, which never fires): a failpoint with no hit is not reached from scratch.
Step 2: **kills at random moments**: chains of jobs whose runs get SIGKILL from outside after a random
        delay (early in start-up or restore, anywhere, or just after a checkpoint completed), at most
        ``max_kills_per_job`` per job, then a last run to completion. These runs count failpoint hits
        too; a run that restored a checkpoint and completed tells which failpoints only a restored
        run reaches.
Step 3: **kills at failpoints**: for each failpoint of the selection that step 1 or 2 reached, jobs
        in which one run kills itself there (``FLOWSTATE_FAILPOINTS=name=kill@N``, the Nth hit drawn
        at random from the hits of a reference run), then runs again to completion. A failpoint only a
        restored run reaches gets a kill just after the job's first checkpoint first. A failpoint
        reached in neither step is reported as *not reached* (it needs a feature this mode or job
        lacks, e.g. alignment in ``at_least_once``).

What is checked:

- after every kill, the next run that decides its restore point restores the newest checkpoint
  completed before the kill (``restoring from checkpoint N`` on its stderr), and a kill after a
  completed checkpoint must therefore restore an id ≥ 1;
- after every run that completes, that it read the input exactly once: the records its sources read
  plus those up to the checkpoint it restored are the records of the reference run, and in every
  mode with kills some completed run restored a checkpoint holding records and read only the rest
  (tasks that ignore their resume state, or a restart from scratch, give the right output too);
- after every run, each oracle's checkpoint check (``flowstate.testing.oracles``);
- after every job, its committed output against the reference, as multisets: **lost** (in the
  reference, missing), **duplicated** (in the reference, more often), **unexpected** (not in the
  reference at all), and each oracle's output check;
- the references of all modes are equal: a job whose output depends on timing cannot be checked.

Exactly-once modes (``exactly_once``, ``unaligned``, ``stop_the_world``) allow no difference at all.
``at_least_once`` allows no lost record; duplicates and unexpected records (a replayed record counted
again by keyed state, e.g. ``(word, n + 1)``) are counted, not failures.

A sink that writes to a server (``RedisStreamSink``, ``NatsSink``, ``KafkaSink``) is read back from
the server by the run that completed (``flowstate.testing._child``); every job gets a unique name in
the environment variable ``FLOWSTATE_CHAOS_JOB`` (``JOB_ENV``), and the job file must name the
sink's stream, subject or topic after it, so that each job starts from an empty output (see
``examples/nats_to_redis.py``).

The runner needs a job whose committed output is deterministic as a multiset, with bounded input,
and long enough for a few checkpoints at the chosen interval: a mode in which no kill came after a
completed checkpoint is reported as a failure, since it proved nothing about recovery.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flowstate.clock import Clock, SystemClock
from flowstate.testing.chaos.config import (
    FROM_SCRATCH,
    JOB_ENV,
    KILLED,
    RANDOM,
    RESTORING,
    ChaosConfig,
    parse_failpoint_selection,
)
from flowstate.testing.chaos.report import ChaosReport, Progress, ScenarioResult
from flowstate.testing.chaos.runs import _ModeRunner, committed_output, latest_completed_checkpoint

__all__ = [
    "FROM_SCRATCH", "JOB_ENV", "KILLED", "RANDOM", "RESTORING", "ChaosConfig", "ChaosReport", "Progress", "ScenarioResult",
    "committed_output", "latest_completed_checkpoint", "parse_failpoint_selection", "run_chaos",
]

# ---- all modes --------------------------------------------------------------------------------------


def run_chaos(config: ChaosConfig, work_dir: Path, *, progress: Progress | None = None,
              clock: Clock | None = None) -> ChaosReport:
    """Steps 1-3 of the module docstring for every mode of ``config``, in ``work_dir`` (created;
    kept as it is), with up to ``config.workers`` jobs at once. Raises ``ConfigError`` when the job
    cannot run at all (its file, its graph, its options); every other failure is in the report."""
    report = ChaosReport(config.job, config.mode_names, config.seed, work_dir=work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    runners = [_ModeRunner(config, mode, work_dir, progress, clock) for mode in config.mode_names]
    selected = config.selected_failpoints
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="chaos") as pool:
        # Step 1.
        if progress is not None:
            progress.phase("runs without failures")
        failures = list(pool.map(_ModeRunner.run_reference, runners))
        report.problems += [f for f in failures if f is not None]
        runners = [r for r, f in zip(runners, failures) if f is None]
        for runner in runners:
            assert runner.reference is not None
            report.reference_records[runner.mode] = sum(c.total() for c in runner.reference.values())
            report.reference_seconds[runner.mode] = round(runner.reference_seconds, 3)
            report.reference_hits[runner.mode] = dict(sorted(runner.hits.items()))
        if runners and any(r.reference != runners[0].reference for r in runners[1:]):
            differing = [r.mode for r in runners[1:] if r.reference != runners[0].reference]
            report.problems.append(
                f"runs without failures in {runners[0].mode} and in {', '.join(differing)} committed different "
                "output: the job's output depends on timing, so it cannot be compared after failures")
            return report

        # Step 2.
        chains: list[tuple[_ModeRunner, int, int, bool]] = []
        for runner in runners:
            needs_restored = any(runner.hits.get(name, 0) == 0 for name in selected) and config.failpoint_kills > 0
            kills = config.kills if config.kills > 0 else int(needs_restored)
            per_chain = config.max_kills_per_job
            for index in range(math.ceil(kills / per_chain)):
                chains.append((runner, index, min(per_chain, kills - index * per_chain), index == 0))
        if progress is not None:
            progress.plan(sum(target for _, _, target, _ in chains))
            progress.phase("kills at random moments")
        random_results = list(pool.map(lambda c: c[0].random_chain(c[1], c[2], c[3]), chains))

        # Step 3.
        at_failpoints: list[tuple[_ModeRunner, str, int]] = []
        for runner in runners:
            for name in selected:
                if runner.hits.get(name, 0) or runner.restored_hits.get(name, 0):
                    at_failpoints += [(runner, name, i) for i in range(config.failpoint_kills)]
        if progress is not None:
            # A failpoint only restored runs reach costs a kill before its own.
            progress.plan(sum(1 if runner.hits.get(name, 0) else 2 for runner, name, _ in at_failpoints))
            progress.phase("kills at failpoints")
        failpoint_results = list(pool.map(lambda k: k[0].failpoint_kill(k[1], k[2]), at_failpoints))

    for runner in runners:
        report.restored_hits[runner.mode] = dict(sorted(runner.restored_hits.items()))
        rows = [ScenarioResult(runner.mode, RANDOM)]
        for result, (chain_runner, *_rest) in zip(random_results, chains):
            if chain_runner is runner:
                rows[0].add(result)
        for name in selected:
            row = ScenarioResult(runner.mode, name)
            row.reached = bool(runner.hits.get(name, 0) or runner.restored_hits.get(name, 0))
            for result, (kill_runner, kill_name, _i) in zip(failpoint_results, at_failpoints):
                if kill_runner is runner and kill_name == name:
                    row.add(result)
            rows.append(row)
        if config.kills == 0 and rows[0].jobs == 0:
            rows = rows[1:]
        report.scenarios += rows
        killed = sum(r.all_kills for r in rows)
        if killed and not sum(r.kills_after_checkpoint for r in rows):
            report.problems.append(
                f"{runner.mode}: none of the {killed} kills came after a completed checkpoint, so no restore was "
                "tested: give the job more input or lower the checkpoint interval")
        elif killed and not sum(r.resumed for r in rows):
            report.problems.append(
                f"{runner.mode}: no run that completed after a kill resumed from a restored checkpoint (its sources "
                "reading only the rest of the input), so no restore was proven")
        elif not killed and (config.kills or (config.failpoint_kills and selected)):
            report.problems.append(f"{runner.mode}: no run was killed: the job ends before any kill lands")
    return report
