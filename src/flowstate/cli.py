"""The ``flowstate`` command line: ``run``, ``checkpoints list``, ``demo``.

Exit status: 0 when a bounded job finished with its output committed; 1 when the job failed (its
restart strategy gave up); 2 for a mistake in the command, the job file or the configuration.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import runpy
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flowstate.config import EXECUTORS, ExponentialBackoffRestart, FixedDelayRestart, Mode, NoRestart, RestartStrategy, parse_duration
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError, GraphError, JobFailedError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def load_dataflow(spec: str) -> Dataflow:
    """The Dataflow named by ``FILE.py``, ``FILE.py:ATTR`` or ``package.module:ATTR``.

    ATTR may name a Dataflow or a function without arguments that returns one. Without ATTR, the
    file must define exactly one module-level Dataflow."""
    target, attr = spec, ""
    if ":" in spec and not Path(spec).exists():
        target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"job file {target} does not exist")
        sys.path.insert(0, str(path.resolve().parent))
        namespace: dict[str, Any] = _job_code(
            f"job file {target}", lambda: runpy.run_path(str(path), run_name="__flowstate_job__"), str(path))
    else:
        try:
            namespace = vars(importlib.import_module(target))
        except ImportError as exc:
            raise ConfigError(f"cannot import job module {target!r}: {exc}") from None
    if attr:
        if attr not in namespace:
            raise ConfigError(f"{target} has no attribute {attr!r}")
        obj = namespace[attr]
        if callable(obj) and not isinstance(obj, Dataflow):
            obj = _job_code(f"{target}:{attr}()", obj, str(Path(target)) if target.endswith(".py") else None)
        if not isinstance(obj, Dataflow):
            raise ConfigError(f"{target}:{attr} is a {type(obj).__name__}, not a flowstate.Dataflow")
        return obj
    flows = {k: v for k, v in namespace.items() if isinstance(v, Dataflow)}
    if len(flows) == 1:
        return next(iter(flows.values()))
    if not flows:
        raise ConfigError(f"{target} defines no module-level flowstate.Dataflow; name one with {target}:ATTR")
    raise ConfigError(f"{target} defines several Dataflows ({', '.join(sorted(flows))}); choose one with {target}:ATTR")


def _job_code(what: str, call: Callable[[], T], filename: str | None = None) -> T:
    """``call()``, which runs code of the job. Whatever it raises (a syntax error, a failed import, a
    source whose files are missing, …) is a mistake in the job, so it becomes a ``ConfigError``
    (exit 2) naming ``what`` and, when the error passed through ``filename``, the line there."""
    try:
        return call()
    except FlowstateError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
        where = f", line {lines[-1]}," if lines else ""
        raise ConfigError(f"{what}{where} raised {type(exc).__name__}: {exc}") from exc


def parse_restart(text: str) -> RestartStrategy:
    """``none``, ``fixed:ATTEMPTS:DELAY`` or ``exponential:ATTEMPTS:INITIAL:MAX``."""
    parts = text.split(":")
    try:
        if parts[0] == "none" and len(parts) == 1:
            return NoRestart()
        if parts[0] == "fixed" and len(parts) in (1, 2, 3):
            attempts = int(parts[1]) if len(parts) > 1 else 3
            delay = parse_duration(parts[2], what="restart delay") if len(parts) > 2 else 0.5
            return FixedDelayRestart(attempts, delay)
        if parts[0] == "exponential" and len(parts) in (1, 2, 3, 4):
            attempts = int(parts[1]) if len(parts) > 1 else 10
            initial = parse_duration(parts[2], what="initial backoff") if len(parts) > 2 else 0.1
            maximum = parse_duration(parts[3], what="maximum backoff") if len(parts) > 3 else 10.0
            return ExponentialBackoffRestart(attempts, initial, maximum)
    except ValueError:
        pass
    raise ConfigError(
        f"cannot read restart strategy {text!r}: use none, fixed:ATTEMPTS:DELAY or exponential:ATTEMPTS:INITIAL:MAX"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowstate", description="Stateful stream processing with exactly-once checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job; after a crash the same command resumes from the latest checkpoint")
    run.add_argument("job", help="FILE.py, FILE.py:ATTR or package.module:ATTR naming a flowstate.Dataflow")
    run.add_argument("--checkpoint-dir", help="where checkpoints are written (required unless --mode none)")
    run.add_argument("--mode", default="exactly_once", help=f"one of {', '.join(m.value for m in Mode)} (default exactly_once)")
    run.add_argument("--interval", default="1s", help="checkpoint interval: seconds or a unit, e.g. 0.5, 500ms, 1s (default 1s)")
    run.add_argument("--timeout", default="10m", help="checkpoint timeout (default 10m)")
    run.add_argument("--min-pause", default="0", help="minimum pause between checkpoints (default 0)")
    run.add_argument("--max-concurrent", type=int, default=1, help="checkpoints in flight at once (default 1)")
    run.add_argument("--tolerable-failures", type=int, default=0, help="failed checkpoints in a row before the job fails (default 0)")
    run.add_argument("--retained", type=int, default=1, help="completed checkpoints kept (default 1)")
    run.add_argument("--restart", default="fixed:3:0.5", help="none, fixed:ATTEMPTS:DELAY or exponential:ATTEMPTS:INITIAL:MAX (default fixed:3:0.5)")
    run.add_argument("--parallelism", type=int, help="default parallelism of the job's operators")
    run.add_argument("--fresh", action="store_true", help="discard existing checkpoints and start from scratch")
    run.add_argument("--allow-non-replayable", action="store_true",
                     help="run an exactly-once job with a source that cannot replay (at-most-once for that source)")
    run.add_argument("--alignment-timeout", help="exactly_once: switch a checkpoint to unaligned when its alignment lasts longer (e.g. 200ms)")
    run.add_argument("--max-inflight-bytes", type=int, default=64 * 1024 * 1024,
                     help="unaligned: decline a checkpoint whose in-flight data per task exceeds this (default 64 MiB)")
    run.add_argument("--executor", choices=EXECUTORS,
                     help="where tasks run: threads of this process, worker processes, or Ray actors "
                          "(default: processes when an operator has parallelism > 1, else threads)")
    run.add_argument("--workers", type=int, help="worker processes (default: one per core, at most the parallelism)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")

    checkpoints = sub.add_parser("checkpoints", help="inspect a checkpoint directory")
    csub = checkpoints.add_subparsers(dest="checkpoints_command", required=True)
    listing = csub.add_parser("list", help="list checkpoints: id, status, time, size, duration")
    listing.add_argument("directory")

    demo = sub.add_parser("demo", help="word count with a crash, a recovery and a check against a batch count")
    demo.add_argument("--dir", default="demo-run", help="working directory of the demo (default ./demo-run)")
    demo.add_argument("--lines", type=int, default=300_000, help="lines of generated text (default 300000)")
    demo.add_argument("--parallelism", type=int, default=2)
    demo.add_argument("--kill-after", type=int, default=2, help="kill the job after this many completed checkpoints")
    return parser


def _setup_logging() -> None:
    """Restore decisions, skipped checkpoints and restarts are always shown; ``--quiet`` only
    silences the progress lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("flowstate: %(message)s"))
    logger = logging.getLogger("flowstate")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _run(args: argparse.Namespace) -> int:
    from flowstate.execution import run

    flow = load_dataflow(args.job)
    result = run(
        flow,
        mode=args.mode,
        checkpoint_dir=args.checkpoint_dir,
        interval=args.interval,
        timeout=args.timeout,
        min_pause=args.min_pause,
        max_concurrent=args.max_concurrent,
        tolerable_failures=args.tolerable_failures,
        retained=args.retained,
        restart=parse_restart(args.restart),
        parallelism=args.parallelism,
        fresh=args.fresh,
        allow_non_replayable=args.allow_non_replayable,
        progress=not args.quiet,
        alignment_timeout=args.alignment_timeout,
        max_inflight_bytes=args.max_inflight_bytes,
        executor=args.executor,
        workers=args.workers,
    )
    where = f"{result.workers} worker process(es)" if result.executor == "processes" else (
        f"{result.workers} Ray worker(s)" if result.executor == "ray" else "threads")
    logging.getLogger("flowstate").info(
        "job %r finished: %s records in %.1fs, %d checkpoint(s) completed, %d restart(s), on %s",
        flow.name, f"{result.records:,}", result.seconds, result.checkpoints_completed, result.restarts, where,
    )
    return EXIT_OK


def _checkpoints_list(args: argparse.Namespace) -> int:
    from flowstate.storage.listing import format_checkpoint_table
    from flowstate.storage.local import LocalCheckpointStorage

    directory = Path(args.directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")
    print(format_checkpoint_table(LocalCheckpointStorage(directory).list_checkpoints()))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "checkpoints":
            return _checkpoints_list(args)
        if args.command == "demo":
            from flowstate.demo import run_demo

            return run_demo(Path(args.dir), lines=args.lines, parallelism=args.parallelism, kill_after=args.kill_after)
    except (ConfigError, GraphError) as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailedError as exc:
        print(f"flowstate: job failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FlowstateError as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("flowstate: interrupted; run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
