"""Encodings on the hot paths of the reference job, measured alone (run by hand, never by the tests).

1. A batch crossing to another worker process: pickle (what every batch used), msgpack, the plain-lines
   text frame (``flowstate.transport.frames.encode_batch``: records joined by ``"\\n"``, UTF-8) and, for
   ``(str, int)`` tuples, hand-rolled columns (``array('q')`` for the ints, joined text for the
   strings): encode and decode, per record of a batch of 1,024.
2. Routing a batch of 2,048 records over 2 subtasks by key: the CRC-32 of every key (as before) and the
   remembered route of each key (``flowstate.task.output``).
3. JSON Lines of a batch of 2,048 ``(key, count)`` records: ``json`` record by record (as before), the C
   encoder of ``json`` record by record, orjson record by record, and orjson once per batch
   (``flowstate.connectors.file_sink.json_lines_batch``).

Each figure is the best of ``--repeat`` passes over 200 batches, in process CPU time (steadier than
wall time on a shared machine); the lines are those of ``events_5m_10k.txt``.

    python benchmarks/record_encodings.py [--repeat 25]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from array import array
from collections.abc import Callable
from itertools import repeat
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any
from zlib import crc32

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def best(fn: Callable[[], Any], records: int, passes: int) -> float:
    """ns per record: the best of ``passes`` CPU times of ``fn``."""
    times = []
    for _ in range(passes):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times) / records * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import msgpack
    import orjson

    from flowstate.connectors.file_sink import json_lines_batch
    from flowstate.transport.frames import decode_batch, encode_batch
    from flowstate.task.output import OutputEdge
    from flowstate.state.keygroups import GOLDEN, routing_table

    lines = (ROOT / "bench-data" / "events_5m_10k.txt").read_text().split("\n")[:409_600]
    n = args.repeat
    rows: list[tuple[str, str, float]] = []

    halves = [lines[i : i + 1024] for i in range(0, 204_800, 1024)]
    tuples = [[(k, i) for i, k in enumerate(h)] for h in halves]
    count = 204_800

    def columns(batch: list[tuple[str, int]]) -> bytes:
        keys, numbers = zip(*batch)
        return array("q", numbers).tobytes() + "\n".join(keys).encode()

    def from_columns(data: bytes, size: int) -> list[tuple[str, int]]:
        numbers = array("q")
        numbers.frombytes(data[: 8 * size])
        return list(zip(str(data[8 * size :], "utf-8").split("\n"), numbers.tolist()))

    frames = [encode_batch(0, 0, h) for h in halves]
    pickled = [pickle.dumps(h, 5) for h in halves]
    packed = [msgpack.packb(h) for h in halves]
    for label, encode, decode in (
        ("lines (str): pickle", lambda: [pickle.dumps(h, 5) for h in halves], lambda: [pickle.loads(p) for p in pickled]),
        ("lines (str): msgpack", lambda: [msgpack.packb(h) for h in halves], lambda: [msgpack.unpackb(p) for p in packed]),
        ("lines (str): text frame", lambda: [encode_batch(0, 0, h) for h in halves],
         lambda: [decode_batch(9, memoryview(f)[13:]) for f in frames]),
    ):
        rows.append(("cross processes", label, best(encode, count, n) + best(decode, count, n)))
    pickled = [pickle.dumps(h, 5) for h in tuples]
    packed = [msgpack.packb(h) for h in tuples]
    cols = [columns(h) for h in tuples]
    for label, encode, decode in (
        ("(str, int): pickle", lambda: [pickle.dumps(h, 5) for h in tuples], lambda: [pickle.loads(p) for p in pickled]),
        ("(str, int): msgpack (tuples back)", lambda: [msgpack.packb(h) for h in tuples],
         lambda: [msgpack.unpackb(p, use_list=False) for p in packed]),
        ("(str, int): columns (array + text)", lambda: [columns(h) for h in tuples],
         lambda: [from_columns(c, 1024) for c in cols]),
    ):
        rows.append(("cross processes", label, best(encode, count, n) + best(decode, count, n)))

    batches = [lines[i : i + 2048] for i in range(0, 409_600, 2048)]
    route, maxp = routing_table(128, 2), 128

    def by_hash() -> None:
        for batch in batches:
            buckets: list[list[str]] = [[], []]
            appends = [b.append for b in buckets]
            for record in batch:
                data = record.encode("utf-8", "surrogatepass")
                appends[route[((crc32(data) * GOLDEN) & 0xFFFFFFFF) * maxp >> 32]](record)

    class Discard:
        def put(self, channel: int, item: Any, cancelled: Any = None) -> None:
            pass

    import threading

    edge = OutputEdge("hash", [(Discard(), 0), (Discard(), 1)], lambda r: r, 128, threading.Event())
    rows.append(("route by key, 2 subtasks", "CRC-32 of every key", best(by_hash, 409_600, n)))
    rows.append(("route by key, 2 subtasks", "remembered routes (OutputEdge)",
                 best(lambda: [edge.emit(b) for b in batches], 409_600, n)))

    pairs = [[(k, i) for i, k in enumerate(b)] for b in batches]
    per_record = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    c_encoder = c_make_encoder(None, None, encode_basestring, None, ":", ",", False, False, True)
    for label, fn in (
        ("json, record by record (before)", lambda: [("\n".join(map(per_record, b)) + "\n").encode() for b in pairs]),
        ("json's C encoder, record by record", lambda: [("\n".join(map("".join, map(c_encoder, b, repeat(0)))) + "\n").encode()
                                                       for b in pairs]),
        ("orjson, record by record", lambda: [b"\n".join(map(orjson.dumps, b)) + b"\n" for b in pairs]),
        ("orjson, once per batch (json_lines_batch)", lambda: [json_lines_batch(b) for b in pairs]),
        ("json.dumps of the whole batch (one array, not lines)", lambda: [json.dumps(b, separators=(",", ":")) for b in pairs]),
    ):
        rows.append(("JSON Lines of (str, int)", label, best(fn, 409_600, n)))

    print(f"Best of {n} passes, CPU time per record (`python benchmarks/record_encodings.py --repeat {n}`).\n")
    print("| path | encoding | ns per record |\n|---|---|---|")
    for path, label, ns in rows:
        print(f"| {path} | {label} | {ns:.0f} |")


if __name__ == "__main__":
    main()
