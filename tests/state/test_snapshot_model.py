"""Snapshot isolation against a reference model, for every backend.

A Hypothesis state machine writes every kind of state (including in-place list and map changes),
changes in place, without storing them again, mutable objects that state reads returned (a dict
value, a list item, a map value, the accumulator of a reduce function that appends in place: rule 2
of ``flowstate.state.values``, such a change is stored), takes snapshots, keeps several of them open,
completes them in any order (restore and compare with
the model as it was at the cut) or releases them unread, and folds whenever it likes. After every
step that asks for it, each state reads exactly as the model says. It also hands keys, present or
not, to ``prefetch`` (rule 8 of ``flowstate.state.backend``; on RocksDB, before every batch or never,
with a cache small enough to be flushed often) and reads the value and reducing states of a key,
present or not (a row found nowhere is cached as absent on RocksDB).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flowstate.state.rocksdb import RocksDBKeyedStateBackend

from .conftest import BACKENDS, MAXP, Store, complete, dump

KINDS = {"v": "value", "l": "list", "m": "map", "r": "reducing",
         "dv": "value", "dl": "list", "dm": "map", "dr": "reducing"}
TAGS = st.sampled_from("xyz")
KEYS = st.sampled_from(["a", 3, ("t", 1)])
SMALL = st.integers(0, 9)


class SnapshotMachine(RuleBasedStateMachine):
    kind = "heap"

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="flowstate-model-"))
        self.store = Store(self.tmp / "store")
        self.backend = self.build()
        b = self.backend
        self.v = b.value_state("v")
        self.l = b.list_state("l")
        self.m = b.map_state("m")
        self.r = b.reducing_state("r", lambda x, y: x + y)
        self.dv = b.value_state("dv")
        self.dl = b.list_state("dl")
        self.dm = b.map_state("dm")
        self.dr = b.reducing_state("dr", lambda acc, more: (acc.extend(more), acc)[1])  # in place
        self.model: dict[str, dict[Any, Any]] = {name: {} for name in KINDS}
        self.pending: list[tuple[Any, dict[str, dict[Any, Any]]]] = []

    def build(self) -> Any:
        return BACKENDS[self.kind](MAXP, range(MAXP), self.tmp / "work")

    def at(self, key: Any) -> None:
        self.backend.keys.current_key = key

    @rule(key=KEYS, value=SMALL | st.none())
    def update_value(self, key: Any, value: int | None) -> None:
        self.at(key)
        self.v.update(value)
        if value is None:
            self.model["v"].pop(key, None)
        else:
            self.model["v"][key] = value

    @rule(key=KEYS, value=SMALL)
    def add_to_list(self, key: Any, value: int) -> None:
        self.at(key)
        self.l.add(value)
        self.model["l"].setdefault(key, []).append(value)

    @rule(key=KEYS, values=st.lists(SMALL, max_size=3))
    def update_list(self, key: Any, values: list[int]) -> None:
        self.at(key)
        self.l.update(values)
        if values:
            self.model["l"][key] = list(values)
        else:
            self.model["l"].pop(key, None)

    @rule(key=KEYS, map_key=SMALL, value=SMALL)
    def put_in_map(self, key: Any, map_key: int, value: int) -> None:
        self.at(key)
        self.m.put(map_key, value)
        self.model["m"].setdefault(key, {})[map_key] = value

    @rule(key=KEYS, map_key=SMALL)
    def remove_from_map(self, key: Any, map_key: int) -> None:
        self.at(key)
        self.m.remove(map_key)
        entries = self.model["m"].get(key)
        if entries is not None:
            entries.pop(map_key, None)
            if not entries:
                del self.model["m"][key]

    @rule(key=KEYS, value=SMALL)
    def reduce(self, key: Any, value: int) -> None:
        self.at(key)
        self.r.add(value)
        self.model["r"][key] = self.model["r"].get(key, 0) + value

    @rule(key=KEYS, name=st.sampled_from(sorted(KINDS)))
    def clear(self, key: Any, name: str) -> None:
        self.at(key)
        getattr(self, name).clear()
        self.model[name].pop(key, None)

    # ---- mutable values, changed in place --------------------------------------------------------

    @rule(key=KEYS, tag=TAGS)
    def store_mutable_values(self, key: Any, tag: str) -> None:
        self.at(key)
        self.dv.update({"seen": [tag]})
        self.dl.add({"seen": [tag]})
        self.dm.put(tag, [tag])
        self.dr.add([tag])
        self.model["dv"][key] = {"seen": [tag]}
        self.model["dl"].setdefault(key, []).append({"seen": [tag]})
        self.model["dm"].setdefault(key, {})[tag] = [tag]
        self.model["dr"][key] = self.model["dr"].get(key, []) + [tag]

    @rule(key=KEYS, tag=TAGS)
    def change_a_value_read_in_place(self, key: Any, tag: str) -> None:
        self.at(key)
        found = self.dv.value()
        if found is not None:
            found["seen"].append(tag)
            self.model["dv"][key]["seen"].append(tag)

    @rule(key=KEYS, tag=TAGS)
    def change_list_items_read_in_place(self, key: Any, tag: str) -> None:
        self.at(key)
        for item in self.dl.get():
            item["seen"].append(tag)
        for item in self.model["dl"].get(key, []):
            item["seen"].append(tag)

    @rule(key=KEYS, tag=TAGS, via_items=st.booleans())
    def change_map_values_read_in_place(self, key: Any, tag: str, via_items: bool) -> None:
        self.at(key)
        if via_items:
            for _, value in self.dm.items():
                value.append(tag)
            for value in self.model["dm"].get(key, {}).values():
                value.append(tag)
        else:
            found = self.dm.get(tag)
            if found is not None:
                found.append(tag)
                self.model["dm"][key][tag].append(tag)

    @rule(key=KEYS, tag=TAGS)
    def reduce_in_place(self, key: Any, tag: str) -> None:
        self.at(key)
        self.dr.add([tag])
        self.model["dr"][key] = self.model["dr"].get(key, []) + [tag]

    @rule(keys=st.lists(KEYS, max_size=4))
    def prefetch(self, keys: list[Any]) -> None:
        if self.backend.wants_prefetch(len(keys)):
            self.backend.prefetch(keys)

    @rule(key=KEYS)
    def read_value_and_reducing_states(self, key: Any) -> None:
        self.at(key)
        assert self.v.value() == self.model["v"].get(key)
        assert self.r.get() == self.model["r"].get(key)
        assert self.dv.value() == self.model["dv"].get(key)
        assert self.dr.get() == self.model["dr"].get(key)

    @rule()
    def take_snapshot(self) -> None:
        self.pending.append((self.backend.snapshot(), copy.deepcopy(self.model)))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def complete_a_snapshot(self, data: st.DataObject) -> None:
        snapshot, expected = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        restored = self.build()
        try:
            restored.restore([complete(snapshot, self.store)])
            assert dump(restored, KINDS) == expected
        finally:
            restored.close()

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def release_a_snapshot_unread(self, data: st.DataObject) -> None:
        snapshot, _ = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        snapshot.release()

    @rule()
    def fold(self) -> None:
        self.backend.maybe_fold()

    @rule()
    def every_state_reads_as_the_model(self) -> None:
        # A rule, not an invariant: reading everything also writes the RocksDB write buffers, and
        # snapshots must be tried with writes still buffered too.
        assert dump(self.backend, KINDS) == self.model
        for name, entries in self.model.items():
            assert sorted(map(repr, self.backend.state_keys(name))) == sorted(map(repr, entries))

    def teardown(self) -> None:
        for snapshot, _ in self.pending:
            snapshot.release()
        self.backend.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class HeapSnapshotMachine(SnapshotMachine):
    kind = "heap"


class IncrementalHeapSnapshotMachine(SnapshotMachine):
    """Chains of a base and deltas: completing snapshots out of order, or releasing one unread,
    makes the next one write a base (``flowstate.state.heap_chain``, rule 3)."""

    kind = "heap-incremental"


class RocksDBSnapshotMachine(SnapshotMachine):
    kind = "rocksdb"


class RocksDBPrefetchSnapshotMachine(SnapshotMachine):
    """Every prefetch is made, and the object cache is flushed whenever it holds more than 2 rows."""

    kind = "rocksdb"

    def build(self) -> Any:
        return RocksDBKeyedStateBackend(MAXP, range(MAXP), base_dir=self.tmp / "work", prefetch="always",
                                        write_batch_entries=2)


@pytest.mark.parametrize(("machine", "examples"), [
    (HeapSnapshotMachine, 200), (IncrementalHeapSnapshotMachine, 200), (RocksDBSnapshotMachine, 25),
    (RocksDBPrefetchSnapshotMachine, 40),
], ids=["heap", "heap-incremental", "rocksdb", "rocksdb-prefetch"])
def test_every_snapshot_restores_exactly_the_state_at_its_cut(machine, examples):
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
