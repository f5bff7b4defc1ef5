"""Journaled ingress and change capture, records/s (run by hand, never by the tests).

1. HTTP: a sender POSTs ``--records`` lines in bodies of ``--per-post`` lines over one keep-alive
   connection to a job (``HttpSource`` → a sink that counts) running exactly-once with 1 s
   checkpoints; once every line is counted the job is stopped. With ``journal=`` (every body fsynced
   before its 200) and without (an exactly-once job then needs ``allow_non_replayable``).
2. CDC: ``--records`` inserted rows, in transactions of 1,000, read by ``PostgresCdcSource`` (bounded
   with ``until=``) into a counting sink, exactly-once with 1 s checkpoints.
3. CDC snapshot: a table of ``--records`` rows read by ``PostgresCdcSource(snapshot=True,
   until="now")`` (the initial snapshot, then nothing: the WAL ends where the job started), the same
   way: the rows/s of the snapshot phase.

Each figure is the median of ``--repeat`` runs in this process. Prints Markdown; with ``--write`` it
replaces the section between ``<!-- ingress:begin -->`` and ``<!-- ingress:end -->`` of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from docsection import write_section  # noqa: E402

import flowstate as fs  # noqa: E402
from flowstate.connectors.postgres import dsn_from_env  # noqa: E402

BEGIN, END = "<!-- ingress:begin -->", "<!-- ingress:end -->"


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, batch: list) -> None:
        self.n += len(batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_run(records: int, per_post: int, journaled: bool, *, senders: int = 1, s3: str | None = None) -> float:
    """Records/s of ``senders`` keep-alive connections POSTing ``records`` lines in all; the journal
    in a local directory, or (``s3``) under that ``s3://`` URL."""
    port = free_port()
    counter = Counter()
    with tempfile.TemporaryDirectory() as work:
        flow = fs.Dataflow("ingress-bench")
        journal = (f"{s3}/{uuid.uuid4().hex[:8]}" if s3 else Path(work) / "journal") if journaled else None
        source = fs.HttpSource(port, path="/in", journal=journal)
        flow.source(source).sink(fs.BatchCallbackSink(counter))
        control = fs.JobControl()
        job = threading.Thread(target=fs.run, args=(flow,), kwargs=dict(
            checkpoints=fs.CheckpointOptions(checkpoint_dir=Path(work) / "chk", interval="1s"),
            recovery=fs.RecoveryOptions(allow_non_replayable=not journaled),
            execution=fs.ExecutionOptions(executor="threads"), control=control))
        job.start()
        connections = [connect(port) for _ in range(senders)]
        body = ("\n".join(f"event {i}" for i in range(per_post)) + "\n").encode()
        posts = records // per_post // senders

        def send(connection: http.client.HTTPConnection) -> None:
            for _ in range(posts):
                connection.request("POST", "/in", body=body)
                answer = connection.getresponse()
                answer.read()
                assert answer.status == 200

        threads = [threading.Thread(target=send, args=(c,)) for c in connections]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        records = posts * senders * per_post
        while counter.n < records:
            time.sleep(0.001)
        elapsed = time.perf_counter() - started
        control.stop().result(timeout=60)
        job.join()
    return records / elapsed


def connect(port: int) -> http.client.HTTPConnection:
    for _ in range(200):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.connect()
            return connection
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the job did not listen on port {port}")


@contextlib.contextmanager
def moto_bucket() -> Iterator[str | None]:
    """``s3://bucket`` of moto's server run in its own process (its CPU is not the job's GIL), with
    the AWS_* variables set for it; ``None`` without moto."""
    import importlib.util
    import os
    import subprocess
    import urllib.request

    if importlib.util.find_spec("moto") is None:
        yield None
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(500):
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT")).close()
                break
            except OSError:
                time.sleep(0.02)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_REGION="us-east-1")
        yield "s3://bench"
    finally:
        server.terminate()
        server.wait()


def cdc_run(records: int) -> float:
    import psycopg

    dsn = dsn_from_env()
    table, slot = f"fs_bench_{uuid.uuid4().hex[:8]}", f"fs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    try:
        source = fs.PostgresCdcSource([table], dsn, slot)
        source.build_reader(source.splits(), None).close()
        with psycopg.connect(dsn) as conn:
            for start in range(0, records, 1000):
                with conn.transaction():
                    with conn.cursor().copy(f"COPY {table} (id, name) FROM STDIN") as copy:
                        for i in range(start, min(records, start + 1000)):
                            copy.write_row((i, f"name {i}"))
            (end,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        counter = Counter()
        flow = fs.Dataflow("cdc-bench")
        flow.source(fs.PostgresCdcSource([table], dsn, slot, until=end)).sink(fs.BatchCallbackSink(counter))
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=Path(work) / "chk", interval="1s"),
                execution=fs.ExecutionOptions(executor="threads"),
            )
            elapsed = time.perf_counter() - started
        assert counter.n == records, counter.n
        return records / elapsed
    finally:
        from flowstate.connectors.postgres_slots import drop_slot

        drop_slot(dsn, slot)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")


def cdc_snapshot_run(records: int) -> float:
    import psycopg

    dsn = dsn_from_env()
    table, slot = f"fs_bench_{uuid.uuid4().hex[:8]}", f"fs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        conn.execute(f"INSERT INTO {table} SELECT i, 'name ' || i FROM generate_series(0, {records - 1}) AS i")
        conn.execute(f"VACUUM ANALYZE {table}")
    try:
        counter = Counter()
        flow = fs.Dataflow("cdc-snapshot-bench")
        flow.source(fs.PostgresCdcSource([table], dsn, slot, snapshot=True, until="now")).sink(
            fs.BatchCallbackSink(counter))
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            fs.run(
                flow,
                checkpoints=fs.CheckpointOptions(checkpoint_dir=Path(work) / "chk", interval="1s"),
                execution=fs.ExecutionOptions(executor="threads"),
            )
            elapsed = time.perf_counter() - started
        assert counter.n == records, counter.n
        return records / elapsed
    finally:
        from flowstate.connectors.postgres_slots import drop_slot

        drop_slot(dsn, slot)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {table}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-post", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--http-only", action="store_true", help="skip the change-capture figures")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"journaled": [], "journaled4": [], "s3": [], "plain": [], "plain4": [],
                                     "cdc": [], "snapshot": []}
    with moto_bucket() as bucket:
        for _ in range(args.repeat):
            rates["journaled"].append(http_run(args.records, args.per_post, True))
            rates["journaled4"].append(http_run(args.records, args.per_post, True, senders=4))
            if bucket is not None:
                rates["s3"].append(http_run(args.records // 4, args.per_post, True, s3=bucket))
            rates["plain"].append(http_run(args.records, args.per_post, False))
            rates["plain4"].append(http_run(args.records, args.per_post, False, senders=4))
            if not args.http_only:
                rates["cdc"].append(cdc_run(args.records))
                rates["snapshot"].append(cdc_snapshot_run(args.records))
            print(", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in rates.items() if v), file=sys.stderr)
    median = {k: statistics.median(v) if v else float("nan") for k, v in rates.items()}
    ratio = statistics.median(j / p for j, p in zip(rates["journaled"], rates["plain"]))
    ratio4 = statistics.median(j / p for j, p in zip(rates["journaled4"], rates["plain4"]))
    text = "\n".join([
        f"{args.records:,} records, median of {args.repeat} runs, exactly-once with 1 s checkpoints, a sink that "
        f"counts. Command: `python benchmarks/ingress.py --records {args.records} --per-post {args.per_post} "
        f"--repeat {args.repeat} --write`.",
        "",
        "| source | records/s |",
        "|---|---|",
        f"| `HttpSource(journal=DIR)`, {args.per_post} lines per POST, one keep-alive connection | {median['journaled']:,.0f} |",
        f"| `HttpSource(journal=DIR)`, the same over 4 connections at once | {median['journaled4']:,.0f} |",
        f"| `HttpSource(journal=\"s3://…\")` (moto's server on loopback, {args.records // 4:,} records), one connection"
        f" | {median['s3']:,.0f} |",
        f"| `HttpSource` without a journal (`allow_non_replayable`), one connection | {median['plain']:,.0f} |",
        f"| `HttpSource` without a journal, 4 connections | {median['plain4']:,.0f} |",
        *([] if args.http_only else [
            f"| `PostgresCdcSource`, inserts in transactions of 1,000 rows | {median['cdc']:,.0f} |",
            f"| `PostgresCdcSource(snapshot=True)`, the initial snapshot of a table of {args.records:,} rows | "
            f"{median['snapshot']:,.0f} |"]),
        "",
        f"The journal keeps {ratio:.0%} of the unjournaled rate with one sender (one segment written durably "
        f"per POST before its 200: a file, its fsync, a rename, the directory's fsync) and {ratio4:.0%} with "
        "four, whose POSTs arriving during an upload share the next one (group commit). The machine's two cores "
        "were shared with other work during the runs: compare the ratios, not the absolute figures.",
        "",
    ])
    print(text)
    if args.write:
        write_section(HERE.parent / "docs" / "benchmarks.md", BEGIN, END, text,
                      absent="## Ingress journal and change capture\n\n" + BEGIN + "\n" + END + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
