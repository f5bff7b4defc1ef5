"""The long chaos run behind ``make chaos``: the oracle workloads (the sequence workload also counting
in a dict changed in place, once per state backend, the windowed workload, the joins and state ttl,
each of the last two on both state backends and at parallelism 1 and 3), every mode, many kills;
the results go into ``docs/reliability.md`` between ``<!-- chaos:begin -->`` and ``<!-- chaos:end -->``.

    python -m flowstate.testing.campaign [--kills 15] [--failpoint-kills 3] [--workers 2] [--seed 1]
        [--write docs/reliability.md | --only WORKLOAD ...]

``--only`` runs the named workloads (e.g. ``joins-heap-p1 ttl-rocksdb-p1``) and prints their tables;
it cannot ``--write``, since the section in the docs covers every workload.

Exit status 0 when every run of every workload matched its reference and every oracle check passed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flowstate import failpoints as fpn
from flowstate.clock import SystemClock
from flowstate.testing.chaos import (
    RANDOM,
    ChaosConfig,
    ChaosReport,
    Progress,
    run_chaos,
)
from flowstate.testing.oracles import EXACTLY_ONCE_MODES, Oracle, bank, joins, sequence, ttl, windows

BEGIN = "<!-- chaos:begin -->"
END = "<!-- chaos:end -->"
MODES = ("exactly_once", "unaligned", "stop_the_world", "at_least_once")
JOINS_RATE = 1500.0
TTL_RATE = 3000.0
"""Records per second and source reader of the joins and ttl workloads: unthrottled, a heap run ends
before its second checkpoint, and a kill after a completed checkpoint rarely lands."""


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    job: str
    """The body of the job file."""
    oracle: Oracle
    retained: int
    description: str
    state_backend: str = "heap"
    modes: tuple[str, ...] = MODES
    """The modes it runs in: a workload whose output an at-least-once replay changes rather than
    repeats (a window's count counting a replayed record again) runs in the exactly-once modes only."""


WORKLOADS = (
    Workload("sequence", f"from flowstate.testing.oracles.sequence import sequence_job\n"
                         f"flow = sequence_job('out', count={sequence.COUNT})\n",
             sequence.oracle(), 1,
             f"{sequence.COUNT:,} records `(source, seq)` from 4 sources, through a keyed counter, into a `FileSink`; "
             "the checker counts lost, duplicated, out-of-order and miscounted records per source and checks each "
             "checkpoint left after a run as a consistent cut"),
    Workload("bank", f"from flowstate.testing.oracles.bank import bank\nflow = bank('out', {bank.COUNT})\n",
             bank.oracle(), 1000,
             f"{bank.COUNT:,} transfers between 16 keyed accounts across two shuffles; every completed checkpoint is "
             "kept and, after every run, audited offline: balances plus credits in flight equal the opening total"),
    *(Workload(f"dict-{backend}", f"from flowstate.testing.oracles.sequence import sequence_job\n"
                                  f"flow = sequence_job('out', count={sequence.COUNT}, mutable_state=True)\n",
               sequence.oracle(), 1,
               f"the sequence workload on the {backend} state backend, its counts kept in a dict that the job changes "
               "in place and stores again (`acc = state.value() or {}; acc[k] += 1; state.update(acc)`): a "
               "checkpoint must hold the dict as it was at its barrier", backend)
      for backend in ("heap", "rocksdb")),
    Workload("windows", f"from flowstate.testing.oracles.windows import windows_job\n"
                        f"flow = windows_job('out', count={windows.COUNT})\n",
             windows.oracle(), 1,
             f"{windows.COUNT:,} clicks of 24 users with event time through session windows (30 s gap) and one-minute "
             f"tumbling windows with an early count every {windows.EARLY} records, into two `FileSink`s; the checker "
             "recomputes every session and every early and final count from the input (exactly-once modes only: in "
             "`at_least_once` a replayed record counts again, so a window's final count may exceed the input's)",
             "rocksdb", tuple(m for m in MODES if m in EXACTLY_ONCE_MODES)),
    *(Workload(f"joins-{backend}-p{parallelism}",
               f"from flowstate.testing.oracles.joins import joins_job\n"
               f"flow = joins_job('out', parallelism={parallelism}, rate={JOINS_RATE})\n",
               joins.oracle(), 1,
               f"{joins.ORDERS:,} orders, {joins.PAYMENTS:,} payments and {joins.TIERS} customer tiers with event time "
               f"(out of order within the watermark bound, and stragglers {joins.LATE:.0f} s late) through "
               f"`interval_join` ({joins.LOWER:+.0f} s .. {joins.UPPER:+.0f} s), `window_join` ({joins.WINDOW:.0f} s "
               "tumbling) and `join_latest`, at parallelism "
               f"{parallelism} on the {backend} backend, into three `FileSink`s; the checker recomputes every pair and "
               "every enrichment from the input (in `at_least_once` only losses count: a replayed record pairs again, and "
               "may meet restored state that moved past it and get a newer tier)",
               backend)
      for backend, parallelism in (("heap", 1), ("rocksdb", 3))),
    *(Workload(f"ttl-{backend}-p{parallelism}",
               f"from flowstate.testing.oracles.ttl import ttl_job\n"
               f"flow = ttl_job('out', parallelism={parallelism}, rate={TTL_RATE})\n",
               ttl.oracle(), 1,
               f"{ttl.COUNT:,} visits over {ttl.keys_written()} keys (a key space that keeps growing) through a "
               f"counter and a list in event-time ttl state ({ttl.TTL:.0f} s), at parallelism {parallelism} on the "
               f"{backend} backend; the checker recomputes every count, restarting after expiry, from the input "
               "(exactly-once modes only, as for the windowed workload)",
               backend, tuple(m for m in MODES if m in EXACTLY_ONCE_MODES))
      for backend, parallelism in (("heap", 3), ("rocksdb", 1))),
)


def run(workload: Workload, work_dir: Path, *, kills: int, failpoint_kills: int, workers: int, seed: int) -> ChaosReport:
    job = work_dir / f"{workload.name}.py"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(workload.job)
    config = ChaosConfig(str(job), modes=workload.modes, kills=kills, failpoint_kills=failpoint_kills, seed=seed,
                         checkpoint_interval="50ms", batch_size=64, retained=workload.retained, workers=workers,
                         oracles=(workload.oracle,), state_backend=workload.state_backend)
    progress = Progress(sys.stderr)
    try:
        return run_chaos(config, work_dir / workload.name, progress=progress)
    finally:
        progress.close()


def _cell(report: ChaosReport, mode: str, where: str) -> str:
    try:
        scenario = report.scenario(mode, where)
    except KeyError:
        return "—"
    if not scenario.reached:
        return "not reached"
    return str(scenario.kills) + (f" (+{scenario.kills_before})" if scenario.kills_before else "")


def section(reports: list[tuple[Workload, ChaosReport]], *, command: str, seconds: float) -> str:
    """The markdown between the markers."""
    total_kills = sum(r.kills for _, r in reports)
    lines = [
        BEGIN,
        "## Chaos runs",
        "",
        (f"`{command}` — {total_kills} process kills in {seconds / 60:.1f} minutes on {os.cpu_count()} cores "
        f"(Python {platform.python_version()}, {platform.system()}). Each job ran with checkpoints every 50 ms and "
        "batches of 64 records; after every kill it was started again until it completed, and its committed output "
        "was compared with a run without failures."),
        "",
        ("| workload | mode | kills | after a completed checkpoint | records checked | lost | duplicated | unexpected |"
        " oracle problems | result |"),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for workload, report in reports:
        for mode in report.modes:
            scenarios = [s for s in report.scenarios if s.mode == mode]
            problems = sum(1 for s in scenarios for p in s.problems if " check: " in p)
            failed = any(s.status == "FAILED" for s in scenarios)
            lines.append(
                f"| {workload.name} | `{mode}` | {sum(s.all_kills for s in scenarios)} | "
                f"{sum(s.kills_after_checkpoint for s in scenarios)} | {sum(s.records for s in scenarios):,} | "
                f"{sum(s.lost for s in scenarios):,} | {sum(s.duplicated for s in scenarios):,} | "
                f"{sum(s.unexpected for s in scenarios):,} | {problems} | {'FAILED' if failed else 'ok'} |")
    lines += ["", ("Kills per failpoint (a failpoint only a restored run reaches is preceded by a kill just after "
              "the first checkpoint, counted in parentheses; *not reached*: the mode lacks the feature, e.g. "
              "alignment):"), ""]
    for workload, report in reports:
        lines += [f"**{workload.name}** — {workload.description}.", "",
                  "| kills at | " + " | ".join(f"`{m}`" for m in report.modes) + " |",
                  "|---|" + "--:|" * len(report.modes)]
        for where in [RANDOM, *sorted(fpn.KNOWN)]:
            lines.append(f"| {where if where == RANDOM else f'`{where}`'} | "
                         + " | ".join(_cell(report, m, where) for m in report.modes) + " |")
        lines.append("")
    at_least_once = [(w, r) for w, r in reports if any(m not in EXACTLY_ONCE_MODES for m in r.modes)]
    if at_least_once:
        lines += [("In `at_least_once` duplicates are allowed and counted (and, for the sequence workload, the "
                  "`miscounted` records of a state that counted a replayed record twice are the unexpected "
                  "ones); nothing may be lost. The exactly-once modes allow no difference at all."), ""]
    verdicts = [f"- {w.name}: {r.verdict()}" for w, r in reports]
    problem_lines = [f"  - {p}" for _, r in reports for p in r.all_problems()[:20]]
    lines += ["Verdicts:", "", *verdicts, *problem_lines, "", END]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    """Replace what stands between the markers in ``path`` (append the section if they are absent)."""
    old = path.read_text() if path.exists() else "# Reliability\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowstate.testing.campaign", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=15, help="kills at random moments per mode and workload")
    parser.add_argument("--failpoint-kills", type=int, default=3, help="kills per failpoint, mode and workload")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", type=Path, help="the markdown file to update between the markers")
    parser.add_argument("--only", nargs="+", metavar="WORKLOAD", choices=[w.name for w in WORKLOADS],
                        help="run these workloads only (not with --write)")
    args = parser.parse_args(argv)
    if args.only and args.write is not None:
        parser.error("--only runs some workloads, but --write replaces the results of all of them: give one of the two")
    workloads = [w for w in WORKLOADS if not args.only or w.name in args.only]
    clock = SystemClock()
    started = clock.monotonic()
    reports = []
    work = Path(tempfile.mkdtemp(prefix="flowstate-campaign-"))
    for workload in workloads:
        reports.append((workload, run(workload, work, kills=args.kills, failpoint_kills=args.failpoint_kills,
                                      workers=args.workers, seed=args.seed)))
    if all(r.ok for _, r in reports):
        shutil.rmtree(work, ignore_errors=True)
        for _, report in reports:
            report.work_dir = None
    for _, report in reports:
        print(report.table(), end="\n\n")
    command = (f"make chaos (python -m flowstate.testing.campaign --kills {args.kills} --failpoint-kills "
               f"{args.failpoint_kills} --workers {args.workers} --seed {args.seed})")
    if args.only:
        command = (f"python -m flowstate.testing.campaign --kills {args.kills} --failpoint-kills {args.failpoint_kills} "
                   f"--workers {args.workers} --seed {args.seed} --only {' '.join(args.only)}")
    text = section(reports, command=command, seconds=clock.monotonic() - started)
    if args.write is not None:
        write(args.write, text)
        print(f"wrote the results to {args.write}")
    return 0 if all(r.ok for _, r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
