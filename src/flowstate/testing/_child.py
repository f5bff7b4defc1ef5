"""One run of a job under the chaos runner, in its own process.

    python -m flowstate.testing._child JOB --out DIR --checkpoint-dir DIR --mode M
        [--interval 100ms] [--retained 1] [--batch-size N] [--state-backend heap] [--report FILE]

Loads the Dataflow named by JOB (as ``flowstate run`` does), points every ``FileSink`` of it at
``DIR/<sink uid>`` so that each job of the runner commits into its own directory, and runs it with
the failpoints of the environment (``FLOWSTATE_FAILPOINTS``). Restore decisions go to stderr as with
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

from flowstate.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_dataflow
from flowstate.config import NoRestart
from flowstate.connectors.file_sink import FileSink
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError, GraphError, JobFailedError
from flowstate.execution import run
from flowstate.failpoints import KNOWN, Failpoints


def redirect_file_sinks(flow: Dataflow, out: Path) -> dict[str, Path]:
    """Point every ``FileSink`` of ``flow`` at ``out/<uid>``; returns uid → directory."""
    directories: dict[str, Path] = {}
    for node in flow.sinks():
        if isinstance(node.fn, FileSink):
            directories[node.uid] = out / node.uid
            node.fn = node.fn.with_directory(directories[node.uid])
    return directories


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
        if not sinks:
            raise ConfigError(f"{args.job} has no FileSink: the chaos runner compares committed FileSink output")
        result = run(flow, mode=args.mode, checkpoint_dir=args.checkpoint_dir, interval=args.interval,
                     retained=args.retained, batch_size=args.batch_size, restart=NoRestart(), failpoints=failpoints,
                     state_backend=args.state_backend,
                     # Threads: a failpoint's kill then ends the whole job, as a crash of its machine
                     # does (worker processes would only lose the worker that hit it: that failover
                     # is tested on its own, in tests/process/test_worker_failover.py).
                     executor="threads")
    except (ConfigError, GraphError, ValueError) as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (JobFailedError, FlowstateError) as exc:
        print(f"flowstate: job failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.report is not None:
        _write_report(args.report, {
            "sinks": sorted(sinks),
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
