"""One run of a job under the chaos runner, in its own process.

    python -m flowstate.testing._child JOB --out DIR --checkpoint-dir DIR --mode M
        [--interval 100ms] [--retained 1] [--batch-size N] [--state-backend heap] [--report FILE]
        [--executor threads|processes]

Loads the Dataflow named by JOB (as ``flowstate run`` does), points every ``FileSink`` of it at
``DIR/<sink uid>`` so that each job of the runner commits into its own directory, and runs it with
the failpoints of the environment (``FLOWSTATE_FAILPOINTS``). A sink that writes to a server and
offers ``committed_records()`` (``RedisStreamSink``, ``NatsSink``, ``KafkaSink``) is read back from
its server once the job finished: its payloads, one per line (a newline or backslash in a payload
escaped), go to ``DIR/<sink uid>/server-records``, where the runner compares them as it compares a
``FileSink``'s files. Such a sink must write somewhere new for every job of the runner: the job file
names its stream, subject or topic after ``FLOWSTATE_CHAOS_JOB`` (a name unique to the job). Restore decisions go to stderr as with
``flowstate run`` (``restoring from checkpoint N``). When the job finishes, a JSON report is
written to ``--report`` (temporary name, then rename): the hits of every failpoint that had an
action, the checkpoint each attempt restored from, the checkpoints completed, and the records its
sources read (``records_read``: per attempt; ``records_restored``: up to the restored checkpoint;
``records_total``: both, for the last attempt).

The job runs without in-process restarts: a failure that is not a kill ends the run with status 1,
for the runner to report. Exit status: 0 finished, 1 failed, 2 a mistake in the job or the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from flowstate.config import NoRestart
from flowstate.connectors.file_sink import FileSink
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError, GraphError, JobFailedError
from flowstate.execution import run
from flowstate.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flowstate.failpoints import KNOWN, Failpoints
from flowstate.jobfile import load_dataflow
from flowstate.options import CheckpointOptions, ExecutionOptions, RecoveryOptions, StateOptions


def redirect_file_sinks(flow: Dataflow, out: Path) -> dict[str, Path]:
    """Point every ``FileSink`` of ``flow`` at ``out/<uid>``; returns uid → directory."""
    directories: dict[str, Path] = {}
    for node in flow.sinks():
        if isinstance(node.fn, FileSink):
            directories[node.uid] = out / node.uid
            node.fn = node.fn.with_directory(directories[node.uid])
    return directories


def server_sinks(flow: Dataflow) -> dict[str, Any]:
    """uid → sink, for every sink of ``flow`` other than a ``FileSink`` that can read its committed
    records back from its server (``committed_records() -> list[bytes]``)."""
    return {node.uid: node.fn for node in flow.sinks()
            if not isinstance(node.fn, FileSink) and callable(getattr(node.fn, "committed_records", None))}


def read_back(sinks: dict[str, Any], out: Path) -> None:
    """Each sink's committed records, read from its server, into ``out/<uid>/server-records``."""
    for uid, sink in sinks.items():
        directory = out / uid
        directory.mkdir(parents=True, exist_ok=True)
        lines = (payload.decode("utf-8", "surrogateescape").replace("\\", "\\\\").replace("\n", "\\n")
                 for payload in sink.committed_records())
        temporary = directory / ".server-records.tmp"
        with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(temporary, directory / "server-records")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flowstate.testing._child")
    parser.add_argument("job")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--checkpoint-dir", required=True, type=Path)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--interval", default="100ms")
    parser.add_argument("--retained", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--state-backend", default="heap")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--executor", choices=("threads", "processes"), default="threads")
    return parser


def _write_report(path: Path, report: dict[str, object]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(report, sort_keys=True))
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("flowstate: %(message)s"))
    logger = logging.getLogger("flowstate")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        failpoints = Failpoints.from_env()
        flow = load_dataflow(args.job)
        sinks = redirect_file_sinks(flow, args.out)
        servers = server_sinks(flow)
        if not sinks and not servers:
            raise ConfigError(f"{args.job} has no FileSink and no sink that reads its output back from its server "
                              "(committed_records()): the chaos runner compares committed output; add one")
        result = run(
            flow,
            checkpoints=CheckpointOptions(
                mode=args.mode,
                checkpoint_dir=args.checkpoint_dir,
                interval=args.interval,
                retained=args.retained,
            ),
            state=StateOptions(backend=args.state_backend),
            recovery=RecoveryOptions(restart=NoRestart()),
            # Threads: a failpoint's kill ends the whole job, as a crash of its machine does.
            # Processes: the runner sets FLOWSTATE_FAILPOINTS_KILL=session, so that the kill
            # ends every process of the run, not only the worker that hit it (that failover
            # is tested on its own, in tests/process/test_worker_failover.py).
            execution=ExecutionOptions(batch_size=args.batch_size, executor=args.executor),
            failpoints=failpoints,
        )
    except (ConfigError, GraphError, ValueError) as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (JobFailedError, FlowstateError) as exc:
        print(f"flowstate: job failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        read_back(servers, args.out)
    except Exception as exc:  # noqa: BLE001 - a server that cannot be read back fails the run, in one line
        print(f"flowstate: job failed: reading the committed output back: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.report is not None:
        _write_report(args.report, {
            "sinks": sorted([*sinks, *servers]),
            "hits": {name: failpoints.hits(name) for name in sorted(KNOWN)},
            "restored_from": result.restored_from,
            "checkpoints_completed": result.checkpoints_completed,
            "records": result.records,
            "records_read": result.records_read,
            "records_restored": result.records_restored,
            "records_total": result.records_total,
            "seconds": result.seconds,
        })
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
