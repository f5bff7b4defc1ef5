"""The changes of a PostgreSQL table, numbered per row, into another table, exactly-once end to end.

``PostgresCdcSource`` reads the table ``DEMO_TABLE`` (with ``DEMO_SNAPSHOT=1``, its rows first, then
its changes; bounded: it stops at the end of the WAL as it was when the job first started), each
change becomes ``(op, id, name, score, n)`` where ``n`` counts the changes of row ``id`` so far
(keyed state), and ``PostgresSink`` inserts the rows into ``DEMO_OUT`` at parallelism 2 when the
checkpoint that covers them completes.

    DEMO_TABLE=items DEMO_OUT=item_changes DEMO_SLOT=items_job DEMO_SNAPSHOT=1 \\
        flowstate run examples/postgres_changes.py --checkpoint-dir chk --executor processes

``DEMO_TABLE`` needs the columns ``id int PRIMARY KEY, name text, score numeric`` and ``DEMO_OUT``
``op text, id int, name text, score numeric, n int``. Configuration (environment): ``DEMO_DSN``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), ``DEMO_PARALLELISM`` (2), ``DEMO_READS``:
a file that grows by one byte per change read (how a test tells how much an attempt read), and
``DEMO_DELAY_MS``: milliseconds of sleep per change read (so that a test's kill lands before the end
of the input, however fast the machine), ``DEMO_FETCH``: changes per poll (2048). The slot stays after the job: ``flowstate postgres-slots
DSN --drop SLOT`` drops it.
"""

import os
import time

import flowstate as fs

DSN = os.environ.get("DEMO_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLE = os.environ.get("DEMO_TABLE", "demo_items")
OUT = os.environ.get("DEMO_OUT", "demo_item_changes")
SLOT = os.environ.get("DEMO_SLOT", "demo_items_job")
SNAPSHOT = os.environ.get("DEMO_SNAPSHOT", "0") == "1"
READS = os.environ.get("DEMO_READS")
DELAY = float(os.environ.get("DEMO_DELAY_MS", "0")) / 1000
FETCH = int(os.environ.get("DEMO_FETCH", "2048"))


def noted(change: fs.Change) -> fs.Change:
    if READS:
        with open(READS, "ab", buffering=0) as f:
            f.write(b".")
    if DELAY:
        time.sleep(DELAY)
    return change


class Number(fs.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count", default=0)

    def process(self, change, ctx):
        n = self.count.value() + 1
        self.count.update(n)
        row = change.before if change.op == "delete" else change.after
        yield (change.op, row["id"], row.get("name"), row.get("score"), n)


flow = fs.Dataflow("postgres-changes", parallelism=int(os.environ.get("DEMO_PARALLELISM", "2")))
(flow.source(fs.PostgresCdcSource([TABLE], DSN, SLOT, snapshot=SNAPSHOT, until="now", fetch=FETCH), uid="changes")
     .map(noted, uid="noted")
     .key_by(lambda change: (change.after or change.before)["id"])
     .process(Number(), uid="number")
     .sink(fs.PostgresSink(OUT, DSN, mode="insert"), uid="out"))
