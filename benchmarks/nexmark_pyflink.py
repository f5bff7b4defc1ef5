"""The Nexmark queries of ``flowstate.nexmark.queries`` as Flink SQL through PyFlink's Table API, for
``benchmarks/nexmark.py``.

    pip install apache-flink               # PyFlink 2.3 with Java 17; not a dependency of flowstate

The events are written once to one CSV file (``write_events``): one line per event, a column
``event_type`` (0 person, 1 auction, 2 bid, as in Flink's Nexmark) and the fields of all three kinds
side by side (those of the other kinds empty or 0). Flink reads it with its ``filesystem`` connector;
``person``, ``auction`` and ``bid`` are views of it, as in the Nexmark repository's Flink setup, so
every query reads all the events, as flowstate and Bytewax do. Event time is ``date_time`` (ms) with
watermarks that trail the newest event by 1 ms (the file is in time order: nothing is late; Flink
drops a record at or before the watermark, so an events' own time would make the next event of the
same millisecond late).

Each job: streaming mode, parallelism 1, checkpoints every 1 s in EXACTLY_ONCE mode (heap state,
checkpoints to a temporary directory), into a ``filesystem`` sink of JSON lines (files committed by
the checkpoints: Flink's exactly-once file sink). The rows are counted and digested from those files
after the job, outside the timing; ``normalise`` turns each JSON line into the tuple flowstate's
query emits (window bounds in float seconds), so that ``repr`` and its CRC-32 are the same.

The queries follow the Nexmark repository's Flink SQL, written to emit flowstate's rows:

- q0-q2: projections and a filter.
- q3: a regular inner join of the persons of OR, ID and CA with the auctions of category 10.
- q4: the Nexmark SQL (a regular join, ``MAX`` per auction, ``AVG`` per category): a changelog of
  running averages per category, not flowstate's one row per closed auction (written as
  ``debezium-json``, one line per change).
- q5: ``HOP`` windows, the count per auction joined with the maximum per window (a window join).
- q6: not run: the planner refuses the Nexmark SQL (``Q6_SQL``, an ``OVER`` window over the highest
  bid per auction of a regular join): the join's output has no time attribute left to order the
  ``OVER`` window by, and with an interval join that keeps one, the highest bid per auction is an
  updating stream, which an ``OVER`` window cannot consume (``q6_error`` gives the message).
- q7: ``TUMBLE`` windows, the bids joined with the maximum price of their window (a window join, so
  that the row carries the window; the Nexmark SQL uses an interval join on ``window_end``).
- q8: persons and sellers per ``TUMBLE`` window, joined on id and window.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from flowstate.nexmark.model import Auction, Bid, Person

EVENT_COLUMNS = (
    ("event_type", "INT"), ("id", "BIGINT"), ("name", "STRING"), ("email_address", "STRING"), ("credit_card", "STRING"),
    ("city", "STRING"), ("state", "STRING"), ("item_name", "STRING"), ("description", "STRING"),
    ("initial_bid", "BIGINT"), ("reserve", "BIGINT"), ("expires", "BIGINT"), ("seller", "BIGINT"),
    ("category", "BIGINT"), ("auction", "BIGINT"), ("bidder", "BIGINT"), ("price", "BIGINT"), ("channel", "STRING"),
    ("url", "STRING"), ("date_time", "BIGINT"), ("extra", "STRING"),
)
WRITTEN = ("q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8")
SAME_ROWS = ("q0", "q1", "q2", "q3", "q5", "q7", "q8")
"""The queries whose Flink SQL emits flowstate's rows (q4 emits a changelog of other rows)."""


def _line(e: Any) -> tuple[Any, ...]:
    if type(e) is Bid:
        return (2, 0, "", "", "", "", "", "", "", 0, 0, 0, 0, 0, e.auction, e.bidder, e.price, e.channel, e.url,
                e.date_time, e.extra)
    if type(e) is Auction:
        return (1, e.id, "", "", "", "", "", e.item_name, e.description, e.initial_bid, e.reserve, e.expires,
                e.seller, e.category, 0, 0, 0, "", "", e.date_time, e.extra)
    if type(e) is Person:
        return (0, e.id, e.name, e.email_address, e.credit_card, e.city, e.state, "", "", 0, 0, 0, 0, 0, 0, 0, 0,
                "", "", e.date_time, e.extra)
    raise TypeError(f"not a Nexmark event: {e!r}")


def write_events(events: Iterable[Any], path: Path) -> int:
    """Write ``events`` as the CSV file Flink reads (atomically: a temporary file renamed)."""
    tmp = path.with_suffix(".tmp")
    n = 0
    with tmp.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for e in events:
            w.writerow(_line(e))
            n += 1
    tmp.rename(path)
    return n


def _events_ddl(path: Path) -> str:
    columns = ",\n  ".join(f"`{name}` {kind}" for name, kind in EVENT_COLUMNS)
    return f"""CREATE TABLE events (
  {columns},
  ts AS TO_TIMESTAMP_LTZ(date_time, 3),
  WATERMARK FOR ts AS ts - INTERVAL '0.001' SECOND
) WITH ('connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'csv')"""


VIEWS = (
    "CREATE VIEW person AS SELECT id, name, email_address, credit_card, city, state, date_time, ts, extra "
    "FROM events WHERE event_type = 0",
    "CREATE VIEW auction AS SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller, "
    "category, ts, extra FROM events WHERE event_type = 1",
    "CREATE VIEW bid AS SELECT auction, bidder, price, channel, url, date_time, ts, extra FROM events WHERE event_type = 2",
)

_HOP = "TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))"
_TUMBLE_BID = "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))"

QUERIES: dict[str, tuple[str, str]] = {
    # query: (the sink's columns, the SELECT)
    "q0": ("auction BIGINT, bidder BIGINT, price BIGINT, date_time BIGINT",
           "SELECT auction, bidder, price, date_time FROM bid"),
    "q1": ("auction BIGINT, bidder BIGINT, price DOUBLE, date_time BIGINT",
           "SELECT auction, bidder, CAST(0.908 AS DOUBLE) * price, date_time FROM bid"),
    "q2": ("auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q3": ("name STRING, city STRING, state STRING, id BIGINT",
           "SELECT P.name, P.city, P.state, A.id FROM auction AS A JOIN person AS P ON A.seller = P.id "
           "WHERE A.category = 10 AND P.state IN ('OR', 'ID', 'CA')"),
    "q4": ("category BIGINT, average DOUBLE",
           "SELECT Q.category, AVG(CAST(Q.final AS DOUBLE)) FROM ("
           " SELECT MAX(B.price) AS final, A.category FROM auction AS A, bid AS B"
           " WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires"
           " GROUP BY A.id, A.category) AS Q "
           "GROUP BY Q.category"),
    "q5": ("window_start TIMESTAMP_LTZ(3), window_end TIMESTAMP_LTZ(3), auction BIGINT, num BIGINT",
           "SELECT C.window_start, C.window_end, C.auction, C.num FROM ("
           f" SELECT auction, COUNT(*) AS num, window_start, window_end FROM {_HOP}"
           " GROUP BY auction, window_start, window_end) AS C "
           "JOIN ("
           " SELECT MAX(num) AS maxn, window_start, window_end FROM ("
           f"  SELECT COUNT(*) AS num, window_start, window_end FROM {_HOP}"
           "  GROUP BY auction, window_start, window_end)"
           " GROUP BY window_start, window_end) AS M "
           "ON C.window_start = M.window_start AND C.window_end = M.window_end AND C.num >= M.maxn"),
    "q7": ("window_start TIMESTAMP_LTZ(3), window_end TIMESTAMP_LTZ(3), auction BIGINT, bidder BIGINT, "
           "price BIGINT, date_time BIGINT",
           "SELECT B.window_start, B.window_end, B.auction, B.bidder, B.price, B.date_time FROM ("
           f" SELECT auction, bidder, price, date_time, window_start, window_end FROM {_TUMBLE_BID}) AS B "
           "JOIN ("
           f" SELECT MAX(price) AS maxprice, window_start, window_end FROM {_TUMBLE_BID}"
           " GROUP BY window_start, window_end) AS M "
           "ON B.window_start = M.window_start AND B.window_end = M.window_end AND B.price = M.maxprice"),
    "q8": ("id BIGINT, name STRING, window_start TIMESTAMP_LTZ(3)",
           "SELECT P.id, P.name, P.window_start FROM ("
           " SELECT id, name, window_start, window_end"
           " FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(ts), INTERVAL '10' SECOND))"
           " GROUP BY id, name, window_start, window_end) AS P "
           "JOIN ("
           " SELECT seller, window_start, window_end"
           " FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(ts), INTERVAL '10' SECOND))"
           " GROUP BY seller, window_start, window_end) AS A "
           "ON P.id = A.seller AND P.window_start = A.window_start AND P.window_end = A.window_end"),
}

Q6_SQL = (
    "SELECT Q.seller, AVG(CAST(Q.price AS DOUBLE)) OVER (PARTITION BY Q.seller ORDER BY Q.ts "
    "ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) FROM ("
    " SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id, seller ORDER BY price DESC) AS rownum FROM ("
    "  SELECT A.id, A.seller, B.price, B.ts FROM auction AS A, bid AS B"
    "  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires))"
    " WHERE rownum <= 1) AS Q"
)


def seconds(text: str) -> float:
    """A JSON ``TIMESTAMP_LTZ`` (``2023-11-14 22:13:20Z``, UTC, optional fraction) in float seconds since
    the epoch, as flowstate's windows give their bounds."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(stamp + "+00:00").timestamp()
    return whole + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def _windowed(n: int) -> Callable[[list[Any]], tuple[Any, ...]]:
    """The first ``n`` values are timestamps (window bounds)."""
    def normalise(values: list[Any]) -> tuple[Any, ...]:
        return tuple(seconds(v) for v in values[:n]) + tuple(values[n:])
    return normalise


NORMALISE: dict[str, Callable[[list[Any]], tuple[Any, ...]]] = {
    "q5": _windowed(2), "q7": _windowed(2),
    "q8": lambda v: (v[0], v[1], seconds(v[2])),
}


def normalise(query: str, line: str) -> tuple[Any, ...]:
    """A JSON line of the sink as the row flowstate's query emits (JSON numbers with a fraction or an
    exponent are floats, as Python's: a double round-trips through Java's text)."""
    record = json.loads(line)
    if query == "q4":
        after = record.get("after") or record.get("before")
        return (record.get("op"), after["category"], after["average"])
    values = list(record.values())
    fix = NORMALISE.get(query)
    return fix(values) if fix else tuple(values)


def digest_rows(rows: Iterable[tuple[Any, ...]]) -> tuple[int, int]:
    """(count, digest) of the rows: the same sum of CRC-32s as ``nexmark.Counter``."""
    total = digest = 0
    for r in rows:
        total += 1
        digest = (digest + zlib.crc32(repr(r).encode())) % (1 << 64)
    return total, digest


def _lines(out: Path) -> Iterable[str]:
    for part in sorted(out.rglob("*")):
        if part.is_file() and not part.name.startswith("."):
            with part.open() as f:
                yield from (line for line in f if line.strip())


def _children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's children: the JVM PyFlink started."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def run(query: str, path: Path, verify: bool) -> dict[str, Any]:
    """Run ``query`` over the events in the CSV file ``path``; seconds from the job's submission to its
    end (``startup``: the seconds to start the JVM and the table environment, before; ``cpu``: the
    JVM's CPU seconds during the job, all its threads)."""
    started = time.perf_counter()
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    work = Path(tempfile.mkdtemp(prefix="pyflink-nexmark-"))
    try:
        config = env.get_config()
        for key, value in {
            "parallelism.default": "1",
            "execution.checkpointing.interval": "1s",
            "execution.checkpointing.mode": "EXACTLY_ONCE",
            "execution.checkpointing.storage": "filesystem",
            "execution.checkpointing.dir": f"file://{work / 'checkpoints'}",
            "state.backend.type": "hashmap",
            "table.local-time-zone": "UTC",
        }.items():
            config.set(key, value)
        env.execute_sql(_events_ddl(path))
        for view in VIEWS:
            env.execute_sql(view)
        columns, select = QUERIES[query]
        out = work / "out"
        fmt = "debezium-json" if query == "q4" else "json"
        env.execute_sql(f"CREATE TABLE sink ({columns}) WITH ('connector' = 'filesystem', "
                        f"'path' = 'file://{out}', 'format' = '{fmt}')")
        startup = time.perf_counter() - started
        cpu = _children_cpu()
        submitted = time.perf_counter()
        env.execute_sql(f"INSERT INTO sink {select}").wait()
        seconds_ = time.perf_counter() - submitted
        cpu = _children_cpu() - cpu
        if verify:
            rows, digest = digest_rows(normalise(query, line) for line in _lines(out))
        else:
            rows, digest = sum(1 for _ in _lines(out)), 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds_, "startup": startup, "cpu": cpu, "rows": rows, "digest": digest, "checkpoints": None}


def q6_error() -> str:
    """The planner's message for the Nexmark q6 (an ``OVER`` window over the closing join)."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.execute_sql(_events_ddl(Path("/nonexistent.csv")))
    for view in VIEWS:
        env.execute_sql(view)
    try:
        env.explain_sql(Q6_SQL)
    except Exception as e:  # noqa: BLE001 - the message is the result
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return ""
