"""Scaling and failover of the multi-process executor (run by hand, never by the tests).

1. Throughput of the keyed count pipeline (the reference job of ``refjob.py``: read lines, key by the
   line, count per key in keyed state, emit (key, count) to a sink that only counts) against the
   number of worker processes: 1, 2 and 4 workers running the same dataflow at parallelism 4 (the
   5 M lines of ``events_5m_10k.txt`` cut into 4 files, one per source subtask), checkpoints every
   second in ``exactly_once``. For reference, the same dataflow on threads of one process, and the
   pipeline at parallelism 1 on threads (one source, one counting task, no exchange between
   subtasks): the fastest single-process configuration. Each figure is a fresh process; rounds are
   interleaved; the median of ``--repeat`` is shown with the CPU time of the whole process tree
   (coordinator and workers) per record.
2. Failover: a job with keyed state of 10 k, 100 k or 1 M keys runs on 2 workers; once a checkpoint
   holds every key, one worker is killed with SIGKILL. Measured from the kill: the moment the
   coordinator reports the worker lost, and the moment records reach a sink again (the first batch
   written by a worker of the new attempt). The restart delay is 0; every task restores from the
   latest completed checkpoint.

3. Transport alone: records/s through four processes in a line.

Prints Markdown; with ``--write`` it replaces the section between ``<!-- scaling:begin -->`` and
``<!-- scaling:end -->`` of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "bench-data"
BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
PARTS = 4
SIZES = (10_000, 100_000, 1_000_000)
CONFIGS = [
    # (label, executor, workers, parallelism)
    ("threads, parallelism 1 (no exchange)", "threads", 0, 1),
    ("threads, parallelism 4", "threads", 0, 4),
    ("processes, 1 worker", "processes", 1, 4),
    ("processes, 2 workers", "processes", 2, 4),
    ("processes, 4 workers", "processes", 4, 4),
]


# ---- the jobs (run in a child process) ---------------------------------------------------------------


def count_job(source: Any, parallelism: int, sink: Any) -> Any:
    import flowstate as fs

    class Count(fs.KeyedProcessFunction):
        def open(self, ctx: fs.RuntimeContext) -> None:
            self.count = ctx.value_state("count", default=0)

        def process(self, key: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
            n = self.count.value() + 1
            self.count.update(n)
            yield (key, n)

    flow = fs.Dataflow("scaling", parallelism=parallelism)
    (flow.source(source, uid="lines")
         .key_by(lambda key: key)
         .process(Count(), uid="count")
         .sink(CallingSink(sink)))
    return flow


class CallingSink:
    """A sink whose writers call ``fn`` with each batch, in the process that runs them (a worker
    process: ``fs.BatchCallbackSink`` would call a function of the coordinator's process, which the
    processes executor refuses)."""

    name = "count"
    transactional = False

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> CallingWriter:
        return CallingWriter(self.fn)


class CallingWriter:
    def __init__(self, fn: Any) -> None:
        self.write_batch = fn

    def pre_commit(self, checkpoint_id: int) -> None:
        pass

    def snapshot(self) -> None:
        return None

    def commit(self, checkpoint_id: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def discard(records: list[Any]) -> None:
    """The sink of the throughput job: records are counted by the sources."""


class FirstBatch:
    """The sink of the failover job: the first batch a worker process writes leaves a file named
    after the process with the wall time (a new process for every attempt)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.written = False

    def __call__(self, records: list[Any]) -> None:
        if not self.written:
            self.written = True
            Path(self.directory, f"{os.getpid()}").write_text(repr(time.time()))


def child_throughput(args: argparse.Namespace) -> None:
    import flowstate as fs

    flow = count_job(fs.FileSource(str(DATA / "parts4" / "*.txt")), args.parallelism, discard)
    chk = tempfile.mkdtemp(prefix="flowstate-scaling-")
    try:
        started = time.perf_counter()
        result = fs.run(
            flow,
            checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=chk, interval="1s"),
            execution=fs.ExecutionOptions(executor=args.executor, workers=args.workers or None),
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(chk, ignore_errors=True)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    json.dump({"records": result.records, "seconds": seconds, "records_per_s": result.records / seconds,
               "cpu_ns_per_record": cpu / max(result.records, 1) * 1e9, "cpu_seconds": cpu,
               "checkpoints": result.checkpoints_completed, "executor": result.executor, "workers": result.workers},
              sys.stdout)
    print()


def child_failover(args: argparse.Namespace) -> None:
    import logging

    import flowstate as fs

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    keys = args.keys
    source = fs.GeneratorSource(lambda i: f"k{i % keys:07d}", None, splits=2, name="keys")
    flow = count_job(source, 2, FirstBatch(args.marks))
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(mode="exactly_once", checkpoint_dir=args.chk, interval="1s", retained=2),
        recovery=fs.RecoveryOptions(restart=fs.FixedDelayRestart(10, 0.0)),
        execution=fs.ExecutionOptions(executor="processes", workers=2),
    )


# ---- measuring (in this process) ----------------------------------------------------------------------


def ensure_data() -> Path:
    source = DATA / "events_5m_10k.txt"
    if not source.exists():
        print(f"generating the shared workload into {DATA} …", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT.parent / "shared" / "bench" / "gen_events.py"), str(DATA)], check=True)
    parts = DATA / "parts4"
    if not (parts / f"part-{PARTS - 1}.txt").exists():
        parts.mkdir(exist_ok=True)
        lines = source.read_bytes().splitlines(keepends=True)
        for k in range(PARTS):
            (parts / f"part-{k}.txt").write_bytes(b"".join(lines[k * len(lines) // PARTS : (k + 1) * len(lines) // PARTS]))
    return parts


def busy_seconds() -> float:
    """CPU seconds every process of the machine has used so far (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_a_quiet_machine(patience: float, threshold: float = 0.15) -> None:
    """Wait (up to ``patience`` seconds) until the rest of the machine used less than ``threshold``
    cores over the last half second: a job that needs every core measures the machine otherwise."""
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        busy = busy_seconds()
        time.sleep(0.5)
        if (busy_seconds() - busy) / 0.5 < threshold:
            return
        time.sleep(0.5)


def throughput(repeat: int, patience: float) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in CONFIGS}
    for i in range(repeat):
        for label, executor, workers, parallelism in CONFIGS:
            wait_for_a_quiet_machine(patience)
            busy, started = busy_seconds(), time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--child", "throughput", "--executor", executor, "--workers", str(workers),
                 "--parallelism", str(parallelism)],
                check=True, capture_output=True, text=True,
            ).stdout
            wall, busy = time.perf_counter() - started, busy_seconds() - busy
            run = json.loads(out)
            # The cores other work took from the machine while the job ran (its own process tree excluded).
            run["others"] = max(0.0, busy - run["cpu_seconds"]) / wall
            runs[label].append(run)
            print(f"  round {i + 1}: {label:>40}: {run['records_per_s']:,.0f} rec/s, "
                  f"{run['cpu_ns_per_record']:.0f} ns CPU/record, other work {run['others']:.2f} cores", file=sys.stderr)
    rows = []
    for label, executor, workers, parallelism in CONFIGS:
        rs = runs[label]
        rows.append({
            "label": label, "executor": executor, "workers": workers, "parallelism": parallelism,
            "records_per_s": statistics.median(r["records_per_s"] for r in rs),
            "min": min(r["records_per_s"] for r in rs), "max": max(r["records_per_s"] for r in rs),
            "cpu_ns": statistics.median(r["cpu_ns_per_record"] for r in rs),
            "others": statistics.median(r["others"] for r in rs),
            "checkpoints": statistics.median(r["checkpoints"] for r in rs),
        })
    return rows


def transport(records: int = 5_000_000, batch: int = 1024) -> dict[str, float]:
    """Records/s through four stages, each a process: the first sends batches of the workload's lines,
    the two in the middle forward every batch they take to the next, the last counts. Every hop is a
    channel of ``flowstate.transport.remote`` over loopback TCP (pickled by the sender, unpickled by
    the receiver, credit-based flow control)."""
    import socket

    from flowstate.checkpoint.barrier import END_OF_INPUT
    from flowstate.transport.remote import DataPlane

    lines = (DATA / "events_5m_10k.txt").read_text().split("\n")[:batch * 64]
    batches = [lines[k : k + batch] for k in range(0, len(lines), batch)]
    hops = []
    for _ in range(3):
        listener = socket.create_server(("127.0.0.1", 0))
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
        listener.close()
        hops.append((sender, receiver))
    result_r, result_w = os.pipe()
    pids = []
    for stage in range(4):
        pid = os.fork()
        if pid == 0:
            plane = DataPlane(4, 8)
            if stage > 0:
                plane.add_peer(stage - 1, hops[stage - 1][1])
                gate = plane.gate(stage, 1)
            if stage < 3:
                plane.add_peer(stage + 1, hops[stage][0])
                writer = plane.writer(stage + 1, stage + 1, 1)
            plane.start(lambda peer, reason: None)
            if stage == 0:
                sent = 0
                while sent < records:
                    for b in batches:
                        writer.put(0, b)
                    sent += len(lines)
                writer.put(0, END_OF_INPUT)
            else:
                count, started = 0, 0.0
                while True:
                    _, item = gate.take(10.0)
                    if item is END_OF_INPUT:
                        break
                    if not count:
                        started = time.perf_counter()
                    count += len(item)
                    if stage < 3:
                        writer.put(0, item)
                if stage < 3:
                    writer.put(0, END_OF_INPUT)
                else:
                    os.write(result_w, json.dumps([count, time.perf_counter() - started]).encode())
            time.sleep(0.2)
            os._exit(0)
        pids.append(pid)
    for sender, receiver in hops:
        sender.close()
        receiver.close()
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(result_w)
    count, seconds = json.loads(os.read(result_r, 100))
    os.close(result_r)
    return {"records": count, "seconds": seconds, "records_per_s": count / seconds, "batch": batch}


def worker_pids(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                children.append(int(entry))
    return children


def keys_in_checkpoint(chk: Path) -> tuple[int, int]:
    """(checkpoint id, keys of the count operator) of the latest completed checkpoint, or (0, 0)."""
    from flowstate.storage.local import LocalCheckpointStorage

    storage = LocalCheckpointStorage(chk)
    for info in sorted(storage.list_checkpoints(), key=lambda c: -c.checkpoint_id):
        if info.status != "completed" or info.metadata is None:
            continue
        keys = 0
        for task in info.metadata.tasks:
            if task.handle is not None and task.vertex == "count":
                state = pickle.loads(storage.read_state(task.handle))
                keys += len(state["count"]["tables"]["count"]["entries"])
        return int(info.checkpoint_id), keys
    return 0, 0


class Lines(threading.Thread):
    """Reads a child's stderr, noting the wall time each line arrived."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append((time.time(), line))

    def first(self, pattern: str, after: float) -> float | None:
        for at, line in list(self.lines):
            if at >= after and re.search(pattern, line):
                return at
        return None


def failover_once(keys: int, tmp: Path) -> dict[str, float]:
    chk, marks = tmp / "chk", tmp / "marks"
    shutil.rmtree(tmp, ignore_errors=True)
    marks.mkdir(parents=True)
    job = subprocess.Popen(
        [sys.executable, __file__, "--child", "failover", "--keys", str(keys), "--chk", str(chk), "--marks", str(marks)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines = Lines(job.stderr)
    lines.start()
    try:
        give_up = time.monotonic() + 300
        while True:  # a completed checkpoint that holds every key
            if job.poll() is not None:
                raise RuntimeError(f"the failover job ended: {''.join(line for _, line in lines.lines)[-2000:]}")
            checkpoint, held = keys_in_checkpoint(chk) if chk.exists() else (0, 0)
            if held >= keys:
                break
            if time.monotonic() > give_up:
                raise RuntimeError(f"no checkpoint with {keys} keys within 300 s")
            time.sleep(0.2)
        time.sleep(0.3)
        before = set(os.listdir(marks))
        victim = worker_pids(job.pid)[0]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        while True:
            new = set(os.listdir(marks)) - before - {str(victim)}
            times = [float((marks / name).read_text() or "inf") for name in new if (marks / name).stat().st_size]
            if times:
                back = min(times)
                break
            if time.time() - killed > 120:
                raise RuntimeError("no output within 120 s of the kill")
            time.sleep(0.01)
        time.sleep(0.2)
        detected = lines.first(r"was killed by SIGKILL", killed)
        restoring = lines.first(r"restoring from checkpoint", killed)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
        lines.join(5)
    return {"keys": keys, "held": held, "checkpoint": checkpoint, "detected": (detected or float("nan")) - killed,
            "restoring": (restoring or float("nan")) - killed, "back": back - killed}


def failover(repeat: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowstate-failover-") as tmp:
        for keys in SIZES:
            runs = []
            for i in range(repeat):
                runs.append(failover_once(keys, Path(tmp) / f"{keys}-{i}"))
                r = runs[-1]
                print(f"  {keys:>9,} keys, run {i + 1}: detected after {r['detected'] * 1000:.0f} ms, restoring after "
                      f"{r['restoring'] * 1000:.0f} ms, processing again after {r['back'] * 1000:.0f} ms", file=sys.stderr)
            rows.append({"keys": keys, "runs": runs,
                         **{k: statistics.median(r[k] for r in runs) for k in ("detected", "restoring", "back")},
                         "back_max": max(r["back"] for r in runs)})
    return rows


def markdown(tp: list[dict[str, Any]], fo: list[dict[str, Any]], hops: list[dict[str, float]], repeat: int) -> str:
    by = {r["label"]: r for r in tp}
    one = by["processes, 1 worker"]
    two = by["processes, 2 workers"]
    single = max((r for r in tp if r["executor"] == "threads"), key=lambda r: r["records_per_s"])
    cores = os.cpu_count() or 1
    lines = [
        (f"Machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, {cores} "
         f"cores, shared with other work. Command: `python benchmarks/scaling.py --repeat {repeat} --write`."),
        "",
        "### Throughput against worker processes",
        "",
        ("The keyed count over the 5 M lines of `events_5m_10k.txt` cut into 4 files; `exactly_once`, checkpoints "
         f"every 1 s. Median of {repeat} fresh processes per row, rounds interleaved. *CPU per record* is the user + "
         "system time of the whole process tree (coordinator and workers) divided by the records. *Scaling* is the "
         "throughput against the same dataflow on 1 worker. *CPU bound* is the scaling the CPU per record allows "
         "when every worker has a core to itself: `min(workers, cores) × (CPU per record on 1 worker) / (CPU per "
         "record)`; the throughput falls short of it when other processes take the cores. Before each run the "
         "benchmark waits (up to `--patience` seconds) for the rest of the machine to go quiet; *other work* is the "
         "CPU the rest of the machine still used while the row's job ran, in cores (from `/proc/stat`, the job's "
         "own process tree left out)."),
        "",
        "| configuration | parallelism | records/s (median) | min – max | scaling | CPU per record | CPU bound | other work (median) | checkpoints |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tp:
        processes = r["executor"] == "processes"
        scaling = f"{r['records_per_s'] / one['records_per_s']:.2f}×" if processes else "—"
        bound = f"{min(r['workers'], cores) * one['cpu_ns'] / r['cpu_ns']:.2f}×" if processes else "—"
        lines.append(
            f"| {r['label']} | {r['parallelism']} | {r['records_per_s']:,.0f} | {r['min']:,.0f} – {r['max']:,.0f} "
            f"| {scaling} | {r['cpu_ns']:.0f} ns | {bound} | {r['others']:.2f} cores | {r['checkpoints']:.0f} |"
        )
    lines += [
        "",
        (f"2 workers against 1 worker: **{two['records_per_s'] / one['records_per_s']:.2f}×** (CPU bound "
         f"{min(2, cores) * one['cpu_ns'] / two['cpu_ns']:.2f}×); against the fastest configuration on threads of "
         f"one process ({single['label']}, {single['records_per_s']:,.0f} records/s): "
         f"**{two['records_per_s'] / single['records_per_s']:.2f}×**."),
        "",
        "### Transport: records through four stages",
        "",
        ("Four processes in a line, each hop a channel between processes (`flowstate.transport.remote` over loopback "
         "TCP: pickled once by the sender, credit-based flow control): the first sends batches of 1,024 lines of "
         "the workload, the two in the middle forward every batch, the last counts. Records/s at the last stage, "
         f"median of {len(hops)} runs: **{statistics.median(h['records_per_s'] for h in hops):,.0f}** "
         f"(min {min(h['records_per_s'] for h in hops):,.0f}, max {max(h['records_per_s'] for h in hops):,.0f})."),
        "",
        "### Worker failover against state size",
        "",
        ("A generator of keys cycling through *n* distinct keys → key_by → the keyed count → a sink, parallelism 2 "
         "on 2 workers, checkpoints every 1 s, restart delay 0. Once a completed checkpoint holds all *n* keys, one "
         "worker is killed with SIGKILL. Times from the kill: *detected* when the coordinator logs the worker lost; "
         "*restore point* when the next attempt has chosen the checkpoint to restore (the other worker killed, the "
         "checkpoint's files verified); *processing again* when a worker of the new attempt wrote its first batch "
         "to the sink (the new workers forked, every task restored from the checkpoint, records flowing end to "
         f"end). Median of {len(fo[0]['runs']) if fo else 0} runs per size, and the slowest."),
        "",
        "| keys in the checkpoint | detected | restore point | processing again (median) | slowest |",
        "|---|---|---|---|---|",
    ]
    for r in fo:
        lines.append(f"| {r['runs'][0]['held']:,} | {r['detected'] * 1000:.0f} ms | {r['restoring'] * 1000:.0f} ms "
                     f"| {r['back'] * 1000:.0f} ms | {r['back_max'] * 1000:.0f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--patience", type=float, default=60.0,
                        help="seconds to wait before each throughput run for other work on the machine to stop")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--child", choices=["throughput", "failover"], help=argparse.SUPPRESS)
    parser.add_argument("--executor", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parallelism", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chk", help=argparse.SUPPRESS)
    parser.add_argument("--marks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.child == "throughput":
        child_throughput(args)
        return
    if args.child == "failover":
        child_failover(args)
        return
    ensure_data()
    tp = [] if args.skip_throughput else throughput(args.repeat, args.patience)
    fo = [] if args.skip_failover else failover(args.repeat)
    hops = [transport() for _ in range(args.repeat)]
    if not tp or not fo:
        print(json.dumps({"throughput": tp, "failover": fo, "transport": hops}, indent=1, default=str))
        return
    text = markdown(tp, fo, hops, args.repeat)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "benchmarks.md"
        current = doc.read_text()
        if BEGIN in current:
            head, _, rest = current.partition(BEGIN)
            _, _, tail = rest.partition(END)
        else:
            head, tail = current.rstrip("\n") + "\n\n## Scaling and failover (multi-process executor)\n\n", "\n"
        doc.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
        print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
