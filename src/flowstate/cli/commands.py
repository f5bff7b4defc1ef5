"""The commands of ``flowstate``, each a function whose parameters are its options.

``run`` takes its options from the groups of ``flowstate.options`` (``with_options``), the same
fields ``fs.run`` takes; every other command declares its few options here, once. Every command
returns its exit status (see ``flowstate.cli``) and prints what it shows through
``flowstate.render``. A duration option (``--timeout``, ``--interval``, ``--grace``, …) is read
by ``flowstate.config.parse_duration`` in every command.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from flowstate import render
from flowstate.cli.options import LogOptions, RunCommandOptions, with_options
from flowstate.config import Mode, parse_duration
from flowstate.errors import ConfigError
from flowstate.exits import EXIT_FAILED, EXIT_OK, EXIT_STOPPED
from flowstate.jobfile import load_dataflow
from flowstate.options import GROUPS, CheckpointOptions, EndpointOptions

app = typer.Typer(name="flowstate", help="Stateful stream processing with exactly-once checkpoints.",
                  add_completion=False, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
checkpoints_app = typer.Typer(help="inspect a checkpoint directory", rich_markup_mode="rich",
                              add_completion=False, no_args_is_help=False)
app.add_typer(checkpoints_app, name="checkpoints")

LOGGING = {"log": LogOptions}
"""Every command takes ``--log-level`` and ``--log-format``."""

Directory = Annotated[str, typer.Argument(metavar="DIRECTORY", help="the job's checkpoint directory", show_default=False)]
Job = Annotated[str, typer.Argument(metavar="JOB", help="FILE.py, FILE.py:ATTR or package.module:ATTR naming a "
                                    "flowstate.Dataflow", show_default=False)]
Timeout = Annotated[str, typer.Option("--timeout", metavar="DURATION",
                                      help="how long to wait for the answer, e.g. 30s, 5m, 1h")]
Json = Annotated[bool, typer.Option("--json", help="print JSON", show_default=False)]


def _setup_logging(log: LogOptions) -> None:
    from flowstate.observe.logs import setup

    setup(log.log_level, log.log_format)


# ---- run ---------------------------------------------------------------------------------------------


@app.command(help="run a job; after a crash the same command resumes from the latest checkpoint")
@with_options({**GROUPS, "command": RunCommandOptions, **LOGGING})
def run(job: Job, *, checkpoints: CheckpointOptions, state: Any, recovery: Any, execution: Any,
        endpoints: EndpointOptions, command: RunCommandOptions, log: LogOptions) -> int:
    from flowstate.control.endpoint import JobControl, StopOnSignal
    from flowstate.execution import run as run_flow

    _setup_logging(log)
    stop_timeout = parse_duration(command.stop_timeout, what="stop timeout")
    if endpoints.control is None:  # --no-control not given: serve it when there is a directory to find it by
        endpoints = replace(endpoints, control=checkpoints.checkpoint_dir is not None and checkpoints.mode.checkpoints)
    flow = load_dataflow(job)
    control = JobControl()
    # SIGTERM asks for a stop (a job without checkpoints has none to take: it stops at once).
    on_sigterm = StopOnSignal(control, grace=stop_timeout if Mode(checkpoints.mode).checkpoints else 0.0) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        result = run_flow(flow, checkpoints=checkpoints, state=state, recovery=recovery, execution=execution,
                          endpoints=endpoints, control=control)
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


# ---- checkpoints list | verify | doctor --------------------------------------------------------------


@checkpoints_app.command("list", help="list checkpoints: id, status, time, size, duration")
@with_options(LOGGING)
def checkpoints_list(directory: Annotated[str, typer.Argument(metavar="DIRECTORY", show_default=False)], *, log: LogOptions) -> int:
    from flowstate.storage.factory import is_url, open_storage

    _setup_logging(log)
    if not is_url(directory) and not Path(directory).is_dir():
        raise ConfigError(f"{directory} is not a directory")
    try:
        storage = open_storage(directory)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(render.checkpoint_table(storage.list_checkpoints()))
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


@checkpoints_app.command("verify", help="verify every checkpoint file, list orphans, check retention; exit 1 on any problem")
@with_options(LOGGING)
def checkpoints_verify(
    location: Annotated[str, typer.Argument(metavar="DIR_OR_URL", help="a checkpoint directory or s3://bucket/prefix",
                                            show_default=False)],
    *,
    retained: Annotated[int | None, typer.Option(
        help="the job's retained checkpoints: fail when more bytes are stored than they reference")] = None,
    grace: Annotated[str, typer.Option(
        metavar="DURATION", help="unreferenced files younger than this may belong to a checkpoint in progress")] = "1h",
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", metavar="KEY=VALUE",
        help="storage option, e.g. endpoint=http://localhost:9000 or region=eu-west-1 (repeatable)")] = None,
    log: LogOptions,
) -> int:
    from flowstate.clock import SystemClock
    from flowstate.storage.factory import is_url, open_storage
    from flowstate.storage.verify import InspectableStorage, verify

    _setup_logging(log)
    if retained is not None and retained < 1:
        raise ConfigError(f"--retained must be at least 1, not {retained}")
    grace_seconds = parse_duration(grace, what="grace period")
    options = dict(_storage_option(text) for text in option or ())
    local = location[len("file://"):] if location.startswith("file://") else None if is_url(location) else location
    if local is not None and not Path(local).is_dir():
        raise ConfigError(f"{local} is not a directory")
    try:
        storage = open_storage(location, **options)
        report = verify(cast(InspectableStorage, storage), location=location, grace_seconds=grace_seconds, now=SystemClock().wall(),
                        retained=retained)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        print(f"flowstate: cannot verify {location}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(render.verify_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


@checkpoints_app.command("doctor", help="explain why checkpoints are slow or failing, and what to change; "
                                        "exit 1 when something is found")
@with_options(LOGGING)
def checkpoints_doctor(directory: Annotated[str, typer.Argument(metavar="DIRECTORY", show_default=False)], *,
                       json_: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
                       log: LogOptions) -> int:
    from flowstate.observe.commands import doctor

    _setup_logging(log)
    return doctor(directory, json_)


# ---- status | checkpoint | savepoint | stop ----------------------------------------------------------


def _call(directory: str, method: str, path: str, timeout: str, body: dict[str, Any] | None = None) -> Any:
    from flowstate.control.endpoint import call, read_endpoint

    seconds = parse_duration(timeout, what="timeout")
    endpoint = read_endpoint(directory)
    return call(endpoint, method, path, body, timeout=seconds) if body is not None else \
        call(endpoint, method, path, timeout=seconds)


def _absolute(path: str | None) -> str | None:
    """A path given on this command line, as the job (which may run elsewhere) must read it."""
    return str(Path(path).resolve()) if path is not None else None


@app.command(help="show the status of the job running with a checkpoint directory")
@with_options(LOGGING)
def status(directory: Directory, *, json_: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
           timeout: Timeout = "1h", log: LogOptions) -> int:
    _setup_logging(log)
    answer = _call(directory, "GET", "/status", timeout)
    print(json.dumps(answer, indent=2, sort_keys=True) if json_ else render.status_lines(answer))
    return EXIT_OK


@app.command(help="take a checkpoint of the running job now")
@with_options(LOGGING)
def checkpoint(directory: Directory, *, timeout: Timeout = "1h", log: LogOptions) -> int:
    _setup_logging(log)
    answer = _call(directory, "POST", "/checkpoint", timeout)
    print(f"checkpoint {answer['checkpoint_id']} completed")
    return EXIT_OK


@app.command(help="take a savepoint of the running job; prints its directory")
@with_options(LOGGING)
def savepoint(directory: Directory, *,
              target: Annotated[str | None, typer.Option(
                  metavar="DIR", help="create the savepoint under DIR (default: the job's --savepoint-dir)")] = None,
              timeout: Timeout = "1h", log: LogOptions) -> int:
    _setup_logging(log)
    answer = _call(directory, "POST", "/savepoint", timeout, {"target": _absolute(target)})
    print(answer["path"])
    return EXIT_OK


@app.command(help="stop the running job after a last checkpoint, with its output committed")
@with_options(LOGGING)
def stop(directory: Directory, *,
         savepoint: Annotated[bool, typer.Option(
             "--savepoint", help="make the last checkpoint a savepoint; prints its directory")] = False,
         target: Annotated[str | None, typer.Option(metavar="DIR", help="with --savepoint: create it under DIR")] = None,
         timeout: Timeout = "1h", log: LogOptions) -> int:
    _setup_logging(log)
    if target is not None and not savepoint:
        raise ConfigError("stop --target names where the savepoint goes: add --savepoint")
    answer = _call(directory, "POST", "/stop", timeout, {"savepoint": savepoint, "target": _absolute(target)})
    print(answer["path"] if answer.get("path") else f"job stopped after checkpoint {answer['checkpoint_id']}")
    return EXIT_OK


# ---- chaos, ui, postgres-slots, demo -----------------------------------------------------------------


@app.command(help="kill a job at random moments and at every failpoint, restart it, and compare its committed "
                  "output with a run without failures")
@with_options(LOGGING)
def chaos(
    job: Annotated[str, typer.Argument(metavar="JOB", show_default=False, help=(
        "FILE.py, FILE.py:ATTR or package.module:ATTR naming a flowstate.Dataflow with a FileSink or a broker "
        "sink (read back from its server)"))],
    *,
    kills: Annotated[int, typer.Option(help="kills at random moments, per mode")] = 10,
    failpoint_kills: Annotated[int, typer.Option(help="kills at each failpoint, per mode")] = 2,
    mode: Annotated[list[str] | None, typer.Option(
        help="snapshot mode; repeat it or give a comma list (default exactly_once)")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of every random choice (default: a new one, printed)")] = None,
    failpoints: Annotated[str, typer.Option(help="all, none, or a comma list of failpoint names")] = "all",
    checkpoint_interval: Annotated[str, typer.Option(metavar="DURATION", help="checkpoint interval of every run")] = "100ms",
    retained: Annotated[int, typer.Option(help="completed checkpoints each run keeps")] = 1,
    executor: Annotated[str, typer.Option(
        help="run every job's tasks on threads or on worker processes (threads or processes)")] = "threads",
    batch_size: Annotated[int | None, typer.Option(
        help="records per batch in every run (default: the engine's, 2048)")] = None,
    oracle: Annotated[list[str] | None, typer.Option(help=(
        "FILE.py:ATTR or module:ATTR naming a flowstate.testing.Oracle (or a function returning one) whose checks "
        "run after every run and job, e.g. flowstate.testing.oracles.sequence:oracle"))] = None,
    timeout: Annotated[str, typer.Option(metavar="DURATION", help="longest a run may take before it counts as hung")] = "2m",
    workers: Annotated[int, typer.Option(help="jobs run at the same time")] = 1,
    work_dir: Annotated[str | None, typer.Option(
        help="where the run directories go (default: a new temporary directory)")] = None,
    keep: Annotated[bool, typer.Option(
        "--keep", help="keep the run directories (they are always kept on a difference)")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print a machine-readable summary instead of the table")] = False,
    log: LogOptions,
) -> int:
    import random
    import shutil
    import tempfile

    from flowstate.testing.chaos import ChaosConfig, Progress, parse_failpoint_selection, run_chaos

    _setup_logging(log)
    if executor not in ("threads", "processes"):
        raise ConfigError(f"unknown executor {executor!r} for chaos: choose one of threads, processes")
    modes = tuple(m.strip() for text in (mode or ["exactly_once"]) for m in text.split(",") if m.strip())
    from flowstate.testing.oracles import load_oracle

    oracles = tuple(load_oracle(spec) for spec in oracle or ())
    config = ChaosConfig(
        job=job, modes=modes, kills=kills, failpoint_kills=failpoint_kills,
        failpoints=parse_failpoint_selection(failpoints),
        seed=seed if seed is not None else random.SystemRandom().randrange(1 << 31),
        checkpoint_interval=checkpoint_interval, retained=retained, batch_size=batch_size,
        run_timeout=timeout, workers=workers, oracles=oracles, executor=executor,
    )
    created = work_dir is None
    directory = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="flowstate-chaos-"))
    progress = Progress(sys.stderr)
    try:
        report = run_chaos(config, directory, progress=progress)
    finally:
        progress.close()
    if not (keep or not report.ok or not created):
        shutil.rmtree(directory, ignore_errors=True)
        report.work_dir = None
    print(json.dumps(report.to_dict(), indent=2) if json_ else report.table())
    return EXIT_OK if report.ok else EXIT_FAILED


@app.command(help="serve the dashboard of a checkpoint directory (a stopped job) from what is on disk")
@with_options(LOGGING)
def ui(directory: Annotated[str, typer.Argument(metavar="DIRECTORY", show_default=False)], *,
       port: Annotated[int, typer.Option(help="port (0: any free one)")] = 8086,
       host: Annotated[str, typer.Option(help="address (loopback only by default)")] = "127.0.0.1",
       log: LogOptions) -> int:
    from flowstate.observe.commands import ui as serve

    _setup_logging(log)
    return serve(directory, host, port)


@app.command("postgres-slots", help="list the logical replication slots of a PostgreSQL server (those of "
                                    "PostgresCdcSource keep WAL until dropped); --drop NAME drops one")
@with_options(LOGGING)
def postgres_slots(
    dsn: Annotated[str, typer.Argument(metavar="DSN", help="the server, e.g. postgresql://user@host:5432/db", show_default=False)],
    *,
    drop: Annotated[str | None, typer.Option(metavar="SLOT", help="drop this slot and its publication (SLOT_pub)")] = None,
    log: LogOptions,
) -> int:
    from flowstate.errors import FlowstateError

    _setup_logging(log)
    try:
        from flowstate.connectors.postgres_slots import drop_slot, list_slots

        if drop:
            drop_slot(dsn, drop)
            print(f"dropped slot {drop} and publication {drop}_pub")
            return EXIT_OK
        slots = list_slots(dsn)
    except ImportError:
        raise ConfigError("postgres-slots needs psycopg: pip install 'flowstate[postgres]'") from None
    except Exception as error:  # a connection or server error: one line
        if isinstance(error, FlowstateError):
            raise
        raise ConfigError(f"postgres-slots: {str(error).strip().splitlines()[0]}") from None
    print(render.slot_table(slots))
    return EXIT_OK


@app.command(help="word count with a crash, a recovery and a check against a batch count")
@with_options(LOGGING)
def demo(*, dir: Annotated[str, typer.Option(help="working directory of the demo")] = "demo-run",
         lines: Annotated[int, typer.Option(help="lines of generated text")] = 300_000,
         parallelism: Annotated[int, typer.Option(help="parallelism of the job")] = 2,
         kill_after: Annotated[int, typer.Option(help="kill the job after this many completed checkpoints")] = 2,
         log: LogOptions) -> int:
    from flowstate.demo import run_demo

    _setup_logging(log)
    return run_demo(Path(dir), lines=lines, parallelism=parallelism, kill_after=kill_after)
