"""The ``flowstate`` command line: ``run``, ``checkpoints list``, ``checkpoints verify``, ``chaos``,
``demo``, and the control of a running job: ``status``, ``checkpoint``, ``savepoint``, ``stop`` (each
given the job's checkpoint directory, where ``run`` writes the address and token of its control
endpoint).

Exit status: 0 when a bounded job finished (it read all its input) with its output committed, or a
control request succeeded; 3 when ``run`` ended on a stop (``flowstate stop``, or SIGTERM) after a
final checkpoint that committed the output up to it; 1 when the job failed (its restart strategy gave
up), when no job is running with the checkpoint directory, or when the requested checkpoint failed;
2 for a mistake in the command, the job file or the configuration, and when the control endpoint
refuses the token; 143 when ``run`` was stopped at once (a second SIGTERM, or no stop within
``--stop-timeout``) and 130 on Ctrl-C, both without a final checkpoint: the same command resumes.
``checkpoints verify`` exits 0 when everything verifies, 1 on any problem (each one listed) or when
the storage cannot be read, 2 for a mistake in the command. ``chaos`` exits 0 when every run
matched the run without failures, 1 on any difference."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import runpy
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flowstate.config import (
    EXECUTORS,
    Mode,
    parse_duration,
    parse_restart,
)
from flowstate.control.endpoint import Terminated, TokenRefused
from flowstate.dataflow import Dataflow
from flowstate.errors import ConfigError, FlowstateError, GraphError, JobFailedError
from flowstate.observe.logs import FORMATS as LOG_FORMATS
from flowstate.observe.logs import LEVELS as LOG_LEVELS

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_TERMINATED = 128 + 15  # as a shell reports a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + 2
T = TypeVar("T")


def load_dataflow(spec: str) -> Dataflow:
    """The Dataflow named by ``FILE.py``, ``FILE.py:ATTR`` or ``package.module:ATTR``.

    ATTR may name a Dataflow or a function without arguments that returns one. Without ATTR, the
    file must define exactly one module-level Dataflow."""
    target, attr = spec, ""
    if ":" in spec and not Path(spec).exists():
        target, attr = spec.rsplit(":", 1)
    namespace = _namespace(target, "job")
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


def _namespace(target: str, what: str) -> dict[str, Any]:
    """The globals of ``FILE.py`` (run as a script, its directory put on ``sys.path``) or of an
    importable module; ``what`` names it in errors ("job", "oracle")."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{what} file {target} does not exist")
        sys.path.insert(0, str(path.resolve().parent))
        return _job_code(f"{what} file {target}", lambda: runpy.run_path(str(path), run_name=f"__flowstate_{what}__"),
                         str(path))
    try:
        return vars(importlib.import_module(target))
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {target!r}: {exc}") from None


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
    run.add_argument("--state-backend", default="heap", help="keyed state: heap or rocksdb (default heap)")
    run.add_argument("--full-checkpoints", action="store_true",
                     help="rocksdb: every checkpoint uploads all files (default: incremental)")
    run.add_argument("--compression", default="zstd", help="state file codec: zstd or none (default zstd)")
    run.add_argument("--state-dir", help="rocksdb working directory (default: a temporary directory)")
    run.add_argument("--executor", choices=EXECUTORS,
                     help="where tasks run: threads of this process, worker processes, or Ray actors "
                          "(default: processes when an operator has parallelism > 1, else threads)")
    run.add_argument("--workers", type=int, help="worker processes (default: one per core, at most the parallelism)")
    run.add_argument("--stop-timeout", default="30s",
                     help="on SIGTERM the job stops after a final checkpoint, as with flowstate stop; without "
                     "that done within this time (or on a second SIGTERM) it stops at once (default 30s)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--from-savepoint", metavar="PATH",
                     help="restore from this savepoint (at any parallelism); running the same command again "
                     "after a crash resumes from the run's own newest checkpoint")
    run.add_argument("--allow-non-restored-state", action="store_true",
                     help="drop state of the restored snapshot that maps to no operator of the job (by uid) "
                     "instead of refusing to start")
    run.add_argument("--drop-sink-state", action="store_true",
                     help="with --allow-non-restored-state: drop a sink's state too, losing the output it "
                     "pre-committed (refused otherwise)")
    run.add_argument("--savepoint-dir", metavar="DIR",
                     help="where savepoints are written (default: CHECKPOINT_DIR/savepoints)")
    run.add_argument("--no-control", action="store_true",
                     help="serve no control endpoint (flowstate status/checkpoint/savepoint/stop)")
    run.add_argument("--control-host", default="127.0.0.1",
                     help="address of the control endpoint (default 127.0.0.1, loopback only)")
    run.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics (/metrics) and the dashboard (/) on this port (0: any free one)")
    run.add_argument("--metrics-host", default="127.0.0.1",
                     help="address of the metrics and dashboard server (default 127.0.0.1, loopback only)")

    checkpoints = sub.add_parser("checkpoints", help="inspect a checkpoint directory")
    csub = checkpoints.add_subparsers(dest="checkpoints_command", required=True)
    listing = csub.add_parser("list", help="list checkpoints: id, status, time, size, duration")
    listing.add_argument("directory")
    verifying = csub.add_parser(
        "verify", help="verify every checkpoint file, list orphans, check retention; exit 1 on any problem")
    verifying.add_argument("location", metavar="DIR_OR_URL", help="a checkpoint directory or s3://bucket/prefix")
    doctoring = csub.add_parser("doctor", help="explain why checkpoints are slow or failing, and what to change; "
                                               "exit 1 when something is found")
    doctoring.add_argument("directory")
    doctoring.add_argument("--json", action="store_true", help="print the findings as JSON")
    verifying.add_argument("--retained", type=int,
                           help="the job's retained checkpoints: fail when more bytes are stored than they reference")
    verifying.add_argument("--grace", default="1h",
                           help="unreferenced files younger than this may belong to a checkpoint in progress (default 1h)")
    verifying.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                           help="storage option, e.g. endpoint=http://localhost:9000 or region=eu-west-1 (repeatable)")

    status = sub.add_parser("status", help="show the status of the job running with a checkpoint directory")
    status.add_argument("directory", help="the job's checkpoint directory")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    trigger = sub.add_parser("checkpoint", help="take a checkpoint of the running job now")
    trigger.add_argument("directory", help="the job's checkpoint directory")
    savepoint = sub.add_parser("savepoint", help="take a savepoint of the running job; prints its directory")
    savepoint.add_argument("directory", help="the job's checkpoint directory")
    savepoint.add_argument("--target", metavar="DIR", help="create the savepoint under DIR (default: the job's --savepoint-dir)")
    stop = sub.add_parser("stop", help="stop the running job after a last checkpoint, with its output committed")
    stop.add_argument("directory", help="the job's checkpoint directory")
    stop.add_argument("--savepoint", action="store_true", help="make the last checkpoint a savepoint; prints its directory")
    stop.add_argument("--target", metavar="DIR", help="with --savepoint: create it under DIR")
    for command in (status, trigger, savepoint, stop):
        command.add_argument("--timeout", type=float, default=3600.0,
                             help="seconds to wait for the answer (default 3600)")

    chaos = sub.add_parser("chaos", help="kill a job at random moments and at every failpoint, restart it, and compare "
                                          "its committed output with a run without failures")
    chaos.add_argument("job", help="FILE.py, FILE.py:ATTR or package.module:ATTR naming a flowstate.Dataflow with a FileSink "
                       "or a broker sink (read back from its server)")
    chaos.add_argument("--kills", type=int, default=10, help="kills at random moments, per mode (default 10)")
    chaos.add_argument("--failpoint-kills", type=int, default=2, help="kills at each failpoint, per mode (default 2)")
    chaos.add_argument("--mode", action="append",
                       help="snapshot mode; repeat it or give a comma list (default exactly_once)")
    chaos.add_argument("--seed", type=int, help="seed of every random choice (default: a new one, printed)")
    chaos.add_argument("--failpoints", default="all", help="all, none, or a comma list of failpoint names (default all)")
    chaos.add_argument("--checkpoint-interval", default="100ms", help="checkpoint interval of every run (default 100ms)")
    chaos.add_argument("--retained", type=int, default=1, help="completed checkpoints each run keeps (default 1)")
    chaos.add_argument("--executor", choices=("threads", "processes"), default="threads",
                       help="run every job's tasks on threads or on worker processes (default threads)")
    chaos.add_argument("--batch-size", type=int, help="records per batch in every run (default: the engine's, 2048)")
    chaos.add_argument("--oracle", action="append", default=[],
                       help="FILE.py:ATTR or module:ATTR naming a flowstate.testing.Oracle (or a function returning one) "
                            "whose checks run after every run and job, e.g. flowstate.testing.oracles.sequence:oracle")
    chaos.add_argument("--timeout", default="2m", help="longest a run may take before it counts as hung (default 2m)")
    chaos.add_argument("--workers", type=int, default=1, help="jobs run at the same time (default 1)")
    chaos.add_argument("--work-dir", help="where the run directories go (default: a new temporary directory)")
    chaos.add_argument("--keep", action="store_true", help="keep the run directories (they are always kept on a difference)")
    chaos.add_argument("--json", action="store_true", help="print a machine-readable summary instead of the table")

    ui = sub.add_parser("ui", help="serve the dashboard of a checkpoint directory (a stopped job) from what is on disk")
    ui.add_argument("directory")
    ui.add_argument("--port", type=int, default=8086, help="port (default 8086; 0: any free one)")
    ui.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1, loopback only)")
    slots = sub.add_parser("postgres-slots", help="list the logical replication slots of a PostgreSQL server "
                           "(those of PostgresCdcSource keep WAL until dropped); --drop NAME drops one")
    slots.add_argument("dsn", help="the server, e.g. postgresql://user@host:5432/db")
    slots.add_argument("--drop", metavar="SLOT", help="drop this slot and its publication (SLOT_pub)")

    demo = sub.add_parser("demo", help="word count with a crash, a recovery and a check against a batch count")
    demo.add_argument("--dir", default="demo-run", help="working directory of the demo (default ./demo-run)")
    demo.add_argument("--lines", type=int, default=300_000, help="lines of generated text (default 300000)")
    demo.add_argument("--parallelism", type=int, default=2)
    demo.add_argument("--kill-after", type=int, default=2, help="kill the job after this many completed checkpoints")
    for command in [c for name, c in sub.choices.items() if name != "checkpoints"] + list(csub.choices.values()):
        command.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default info")
        command.add_argument("--log-format", default="text", choices=LOG_FORMATS, help="text or json (one object a line)")
    return parser


def _setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Restore decisions, skipped checkpoints and restarts are shown at the default level (info);
    ``--quiet`` only silences the progress lines."""
    from flowstate.observe.logs import setup

    setup(level, fmt)


def _run(args: argparse.Namespace) -> int:
    from flowstate.control.endpoint import JobControl, StopOnSignal

    stop_timeout = parse_duration(args.stop_timeout, what="stop timeout")
    flow = load_dataflow(args.job)
    control = JobControl()
    # SIGTERM asks for a stop (a job without checkpoints has none to take: it stops at once).
    on_sigterm = StopOnSignal(control, grace=stop_timeout if Mode.parse(args.mode).checkpoints else 0.0) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        result = _run_flow(flow, args, control)
    finally:
        if on_sigterm is not None:
            on_sigterm.close()
    where = f"{result.workers} worker process(es)" if result.executor == "processes" else (
        f"{result.workers} Ray worker(s)" if result.executor == "ray" else "threads")
    logging.getLogger("flowstate").info(
        "job %r %s: %s in %.1fs, %d checkpoint(s) completed, %d restart(s), on %s",
        flow.name, "stopped" if result.stopped else "finished", result.records_summary(), result.seconds,
        result.checkpoints_completed, result.restarts, where,
    )
    return EXIT_STOPPED if result.stopped else EXIT_OK


def _run_flow(flow: Dataflow, args: argparse.Namespace, control: Any) -> Any:
    """``fs.run`` with the options of ``flowstate run``: every string is read by ``fs.run`` itself."""
    from flowstate.execution import run

    return run(
        flow,
        mode=args.mode,
        checkpoint_dir=args.checkpoint_dir,
        interval=args.interval,
        timeout=args.timeout,
        min_pause=args.min_pause,
        max_concurrent=args.max_concurrent,
        tolerable_failures=args.tolerable_failures,
        retained=args.retained,
        restart=args.restart,
        parallelism=args.parallelism,
        fresh=args.fresh,
        allow_non_replayable=args.allow_non_replayable,
        progress=not args.quiet,
        alignment_timeout=args.alignment_timeout,
        max_inflight_bytes=args.max_inflight_bytes,
        state_backend=args.state_backend,
        incremental=not args.full_checkpoints,
        compression=args.compression,
        state_dir=args.state_dir,
        from_savepoint=args.from_savepoint,
        allow_non_restored_state=args.allow_non_restored_state,
        drop_sink_state=args.drop_sink_state,
        savepoint_dir=args.savepoint_dir,
        control_endpoint=not args.no_control and args.checkpoint_dir is not None and Mode.parse(args.mode).checkpoints,
        control_host=args.control_host,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        executor=args.executor,
        workers=args.workers,
        control=control,
    )


def _checkpoints_list(args: argparse.Namespace) -> int:
    from flowstate.storage.factory import is_url, open_storage
    from flowstate.storage.listing import format_checkpoint_table

    location = args.directory
    if not is_url(location) and not Path(location).is_dir():
        raise ConfigError(f"{location} is not a directory")
    try:
        storage = open_storage(location)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(format_checkpoint_table(storage.list_checkpoints()))
    return EXIT_OK


def _storage_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an int, a float, true/false, or else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"cannot read storage option {text!r}: use KEY=VALUE")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _checkpoints_verify(args: argparse.Namespace) -> int:
    from flowstate.clock import SystemClock
    from flowstate.storage.factory import is_url, open_storage
    from flowstate.storage.verify import format_report, verify

    location = args.location
    if args.retained is not None and args.retained < 1:
        raise ConfigError(f"--retained must be at least 1, not {args.retained}")
    grace = parse_duration(args.grace, what="grace period")
    options = dict(_storage_option(text) for text in args.option)
    local = location[len("file://"):] if location.startswith("file://") else None if is_url(location) else location
    if local is not None and not Path(local).is_dir():
        raise ConfigError(f"{local} is not a directory")
    try:
        storage = open_storage(location, **options)
        report = verify(storage, location=location, grace_seconds=grace, now=SystemClock().wall(), retained=args.retained)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        print(f"flowstate: cannot verify {location}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def _control(args: argparse.Namespace) -> int:
    from flowstate.control.endpoint import call, read_endpoint

    if args.command == "stop" and args.target is not None and not args.savepoint:
        raise ConfigError("stop --target names where the savepoint goes: add --savepoint")
    endpoint = read_endpoint(args.directory)
    if args.command == "status":
        status = call(endpoint, "GET", "/status", timeout=args.timeout)
        if args.json:
            print(json.dumps(status, indent=2, sort_keys=True))
        else:
            for key in sorted(status):
                print(f"{key}: {json.dumps(status[key])}")
        return EXIT_OK
    if args.command == "checkpoint":
        answer = call(endpoint, "POST", "/checkpoint", timeout=args.timeout)
        print(f"checkpoint {answer['checkpoint_id']} completed")
        return EXIT_OK
    if args.command == "savepoint":
        answer = call(endpoint, "POST", "/savepoint", {"target": _absolute(args.target)}, timeout=args.timeout)
        print(answer["path"])
        return EXIT_OK
    answer = call(endpoint, "POST", "/stop", {"savepoint": args.savepoint, "target": _absolute(args.target)},
                  timeout=args.timeout)
    if answer.get("path"):
        print(answer["path"])
    else:
        print(f"job stopped after checkpoint {answer['checkpoint_id']}")
    return EXIT_OK


def _absolute(path: str | None) -> str | None:
    """A path given on this command line, as the job (which may run elsewhere) must read it."""
    return str(Path(path).resolve()) if path is not None else None


def _load_oracle(spec: str) -> Any:
    from flowstate.testing.oracles import Oracle

    target, _, attr = spec.rpartition(":") if ":" in spec else (spec, "", "oracle")
    namespace = _namespace(target, "oracle")
    if attr not in namespace:
        raise ConfigError(f"{target} has no attribute {attr!r}")
    obj = namespace[attr]
    if callable(obj) and not isinstance(obj, Oracle):
        obj = _job_code(f"oracle {spec}", obj)
    if not isinstance(obj, Oracle):
        raise ConfigError(f"oracle {spec!r} is a {type(obj).__name__}, not a flowstate.testing.Oracle")
    return obj


def _chaos(args: argparse.Namespace) -> int:
    import json
    import random
    import shutil
    import tempfile

    from flowstate.testing.chaos import (
        ChaosConfig,
        Progress,
        parse_failpoint_selection,
        run_chaos,
    )

    modes = tuple(m.strip() for text in (args.mode or ["exactly_once"]) for m in text.split(",") if m.strip())
    oracles = tuple(_load_oracle(spec) for spec in args.oracle)
    config = ChaosConfig(
        job=args.job, modes=modes, kills=args.kills, failpoint_kills=args.failpoint_kills,
        failpoints=parse_failpoint_selection(args.failpoints),
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31),
        checkpoint_interval=args.checkpoint_interval, retained=args.retained, batch_size=args.batch_size,
        run_timeout=args.timeout, workers=args.workers, oracles=oracles, executor=args.executor,
    )
    created = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="flowstate-chaos-")) if created else Path(args.work_dir)
    progress = Progress(sys.stderr)
    try:
        report = run_chaos(config, work_dir, progress=progress)
    finally:
        progress.close()
    keep = args.keep or not report.ok or not created
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
        report.work_dir = None
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return EXIT_OK if report.ok else EXIT_FAILED


def _postgres_slots(args: argparse.Namespace) -> int:
    from flowstate.connectors.postgres_slots import drop_slot, list_slots

    try:
        if args.drop:
            drop_slot(args.dsn, args.drop)
            print(f"dropped slot {args.drop} and publication {args.drop}_pub")
            return EXIT_OK
        slots = list_slots(args.dsn)
    except ImportError:
        raise ConfigError("postgres-slots needs psycopg: pip install 'flowstate[postgres]'") from None
    except Exception as error:  # a connection or server error: one line
        if isinstance(error, FlowstateError):
            raise
        raise ConfigError(f"postgres-slots: {str(error).strip().splitlines()[0]}") from None
    print(f"{'SLOT':<32} {'PLUGIN':<10} {'ACTIVE':<7} {'CONFIRMED':<14} {'WAL HELD':>12}")
    for slot in slots:
        print(f"{slot['slot']:<32} {slot['plugin']:<10} {'yes' if slot['active'] else 'no':<7} "
              f"{slot['confirmed'] or '-':<14} {slot['retained_bytes'] or 0:>12,}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "checkpoints":
            if args.checkpoints_command == "verify":
                return _checkpoints_verify(args)
            if args.checkpoints_command == "doctor":
                from flowstate.observe.commands import doctor

                return doctor(args.directory, args.json)
            return _checkpoints_list(args)
        if args.command in ("status", "checkpoint", "savepoint", "stop"):
            return _control(args)
        if args.command == "chaos":
            return _chaos(args)
        if args.command == "ui":
            from flowstate.observe.commands import ui

            return ui(args.directory, args.host, args.port)
        if args.command == "postgres-slots":
            return _postgres_slots(args)
        if args.command == "demo":
            from flowstate.demo import run_demo

            return run_demo(Path(args.dir), lines=args.lines, parallelism=args.parallelism, kill_after=args.kill_after)
    except (ConfigError, GraphError, TokenRefused) as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailedError as exc:
        print(f"flowstate: job failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FlowstateError as exc:
        print(f"flowstate: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated as exc:
        print(f"flowstate: stopped at once ({exc.why}), without a final checkpoint; run the same command again "
              "to resume from the latest checkpoint", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("flowstate: interrupted; run the same command again to resume from the latest checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
