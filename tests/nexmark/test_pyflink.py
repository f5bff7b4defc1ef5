"""The Flink SQL of ``benchmarks/nexmark_pyflink.py``: the CSV file it reads holds every field of every
event and a sink's JSON line becomes flowstate's row. Whether Flink's rows equal flowstate's is checked
by the benchmark itself (its "same rows" column): PyFlink is a peer installed beside flowstate by hand
(the ``peers`` extra), not a test dependency."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from flowstate.nexmark import NexmarkConfig, NexmarkGenerator
from flowstate.nexmark.model import Auction, Bid, Person

# Loaded from its file: a directory put on sys.path reaches every interpreter started with that sys.path (executors,
# subprocesses), and a module there could shadow the standard library in them.
_SPEC = importlib.util.spec_from_file_location(
    "nexmark_pyflink", Path(__file__).resolve().parents[2] / "benchmarks" / "nexmark_pyflink.py")
assert _SPEC is not None and _SPEC.loader is not None
flink = importlib.util.module_from_spec(_SPEC)
sys.modules["nexmark_pyflink"] = flink
_SPEC.loader.exec_module(flink)

CONFIG = NexmarkConfig(rate=100, in_flight_auctions=20)
N = 4000
KINDS = {0: (Person, ("id", "name", "email_address", "credit_card", "city", "state", "date_time", "extra")),
         1: (Auction, ("id", "item_name", "description", "initial_bid", "reserve", "date_time", "expires", "seller",
                       "category", "extra")),
         2: (Bid, ("auction", "bidder", "price", "channel", "url", "date_time", "extra"))}


def test_the_csv_file_holds_every_field_of_every_event_under_its_column(tmp_path):
    events = NexmarkGenerator(CONFIG).events(0, 500)
    path = tmp_path / "events.csv"
    assert flink.write_events(events, path) == 500
    names = [name for name, _ in flink.EVENT_COLUMNS]
    kinds = dict(flink.EVENT_COLUMNS)
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    back = []
    for line in lines:
        assert len(line) == len(names)
        values = dict(zip(names, line))
        cls, fields = KINDS[int(values["event_type"])]
        back.append(cls(**{k: int(values[k]) if kinds[k] == "BIGINT" else values[k] for k in fields}))
    assert back == events
    assert {type(e) for e in back} == {Person, Auction, Bid}


def test_a_timestamp_of_the_json_sink_is_float_seconds_since_the_epoch():
    assert flink.seconds("2023-11-14 22:13:20Z") == 1_700_000_000.0
    assert flink.seconds("2023-11-14 22:13:24.03Z") == pytest.approx(1_700_000_004.03)
    assert flink.seconds("2023-11-14 22:13:24.5Z") == 1_700_000_004.5


def test_a_sink_line_becomes_the_row_flowstate_emits():
    q5 = '{"window_start":"2023-11-14 22:13:12Z","window_end":"2023-11-14 22:13:22Z","auction":1011,"num":7}'
    assert flink.normalise("q5", q5) == (1_699_999_992.0, 1_700_000_002.0, 1011, 7)
    q1 = '{"auction":1011,"bidder":1001,"price":1.543600005382624E12,"date_time":1700000000004}'
    row = flink.normalise("q1", q1)
    assert row == (1011, 1001, 1_543_600_005_382.624, 1_700_000_000_004)
    assert repr(row) == repr((1011, 1001, 0.908 * 1_700_000_005_928, 1_700_000_000_004))
    q8 = '{"id":1003,"name":"Kate Smith","window_start":"2023-11-14 22:13:20Z"}'
    assert flink.normalise("q8", q8) == (1003, "Kate Smith", 1_700_000_000.0)


def test_the_digest_is_a_sum_of_crc32_of_each_rows_repr_whatever_the_order():
    rows = [(1, "a", 2.5), (2, "b", 3.0)]
    assert flink.digest_rows(rows) == flink.digest_rows(reversed(rows))
    assert flink.digest_rows(rows)[0] == 2
    assert flink.digest_rows(rows) != flink.digest_rows([(1, "a", 2.5), (2, "b", 3)])


def test_the_json_of_a_row_is_read_in_column_order():
    line = json.dumps({"auction": 5, "price": 7})
    assert flink.normalise("q2", line) == (5, 7)
