"""A keyed edge routes every record to the subtask that owns its key's key group, whether it hashes
the key or remembers the route of a key it saw before; equal keys take one route."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from flowstate.errors import UserFunctionError
from flowstate.state.keygroups import key_group_of, subtask_for_key_group
from flowstate.task import output
from flowstate.task.output import OutputEdge

MAXP = 128


class Collect:
    """A channel writer that keeps what it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[Any]]] = []

    def put(self, channel: int, item: Any, cancelled: threading.Event | None = None) -> None:
        self.batches.append((channel, item))


def edge(parallelism: int, key_fn=lambda record: record) -> tuple[OutputEdge, list[Collect]]:
    writers = [Collect() for _ in range(parallelism)]
    return OutputEdge("hash", [(w, 0) for w in writers], key_fn, MAXP, threading.Event()), writers


def received(writers: list[Collect]) -> list[list[Any]]:
    return [[r for _, batch in w.batches for r in batch] for w in writers]


def owner(key: Any, parallelism: int) -> int:
    return subtask_for_key_group(key_group_of(key, MAXP), MAXP, parallelism)


@pytest.mark.parametrize("parallelism", [2, 3, 5])
def test_every_record_goes_to_the_owner_of_its_key_group_on_first_sight_and_after(parallelism):
    keys = [f"k{i}" for i in range(200)] + [7, 7.0, True, 1, -0.0, 0, ("a", 2), b"raw", None]
    out, writers = edge(parallelism)
    for _ in range(3):  # hashed, then remembered
        out.emit(list(keys))
    for subtask, records in enumerate(received(writers)):
        assert all(owner(k, parallelism) == subtask for k in records)
        assert sorted(map(repr, records)) == sorted(repr(k) for k in keys * 3 if owner(k, parallelism) == subtask)


def test_keys_equal_in_python_take_one_route_whichever_was_seen_first():
    for first, second in ((1, True), (True, 1.0), (0, -0.0), (2.0, 2)):
        out, writers = edge(4)
        out.emit([first])
        out.emit([second])
        assert [len(r) for r in received(writers) if r] == [2], (first, second)


def test_with_more_distinct_keys_than_the_cache_holds_routes_stay_right_and_the_cache_turns_off(monkeypatch):
    monkeypatch.setattr(output, "ROUTE_CACHE_KEYS", 50)
    out, writers = edge(3)
    keys = [f"k{i}" for i in range(1000)]
    for start in range(0, len(keys), 100):
        out.emit(keys[start:start + 100])
    assert out._routes is None, "mostly new keys once the cache is full: it is turned off"
    for subtask, records in enumerate(received(writers)):
        assert records and all(owner(k, 3) == subtask for k in records)
    assert sorted(k for r in received(writers) for k in r) == sorted(keys)


def test_a_key_that_breaks_the_rules_fails_naming_key_by_whether_or_not_routes_are_remembered(monkeypatch):
    for cache in (output.ROUTE_CACHE_KEYS, 0):
        monkeypatch.setattr(output, "ROUTE_CACHE_KEYS", cache)
        for bad in (["list"], float("nan"), ("t", {"d": 1})):
            out, _ = edge(2, key_fn=lambda record: record[1])
            out.emit([("ok", "fine")])
            with pytest.raises(UserFunctionError, match="key_by"):
                out.emit([("bad", bad)])


def test_a_new_key_in_a_batch_of_remembered_ones_keeps_every_record_in_order_on_its_route():
    out, writers = edge(3)
    known = [f"k{i}" for i in range(30)]
    out.emit(list(known))  # every route remembered
    for w in writers:
        w.batches.clear()
    batch = known[:10] + ["new-1"] + known[10:20] + ["new-2"] + known[20:]
    out.emit(batch)
    for subtask, records in enumerate(received(writers)):
        assert records == [k for k in batch if owner(k, 3) == subtask]


def test_a_key_function_that_fails_in_a_batch_of_remembered_keys_fails_as_key_by_on_that_record():
    def key_fn(record):
        if record == "boom":
            raise KeyError("not a route lookup: the key function's own failure")
        return record

    out, _ = edge(2, key_fn=key_fn)
    out.emit(["a", "b", "c"])
    with pytest.raises(UserFunctionError, match="key_by") as failure:
        out.emit(["a", "b", "boom", "c"])
    assert failure.value.record == "boom"


def test_the_identity_key_routes_exactly_as_a_key_function_that_computes_the_same_key():
    """``lambda record: record`` is not called on remembered keys (rule 4 of ``flowstate.state.keys``);
    ``(record,)[0]`` is the same key computed by a call: both must route every batch alike."""
    batches = [[f"k{i % 37}" for i in range(start, start + 50)] + [7, 7.0, ("a", 2), None] for start in range(0, 200, 50)]
    outs = []
    for key_fn in (lambda record: record, lambda record: (record,)[0]):
        out, writers = edge(3, key_fn=key_fn)
        for batch in batches:
            out.emit(list(batch))
        outs.append((out._itself, [[(ch, list(b)) for ch, b in w.batches] for w in writers]))
    assert [itself for itself, _ in outs] == [True, False]
    assert outs[0][1] == outs[1][1]


def test_a_record_that_is_not_a_key_fails_as_key_by_under_the_identity_key_too(monkeypatch):
    for cache in (output.ROUTE_CACHE_KEYS, 0):
        monkeypatch.setattr(output, "ROUTE_CACHE_KEYS", cache)
        for bad in (["list"], float("nan"), ("t", {"d": 1})):
            out, _ = edge(2)
            out.emit(["ok", "fine"])
            with pytest.raises(UserFunctionError, match="key_by"):
                out.emit(["ok", bad])
