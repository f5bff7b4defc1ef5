"""The RocksDB backend: row layout by key group, incremental snapshots as shared SST files, restores
that open the files in place, and the working directory's life cycle (``flowstate.state.rocksdb``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from flowstate.state.backend import RestoredState, StateError
from flowstate.state.codec import decode_key, encode_key
from flowstate.state.keygroups import key_group_of, key_group_range
from flowstate.state.rocksdb import (
    RocksDBBackendFactory,
    RocksDBKeyedStateBackend,
    key_prefix,
)

from .conftest import Store, complete, dump

MAXP = 128


@pytest.fixture
def backends(tmp_path):
    built = []

    def build(groups: range = range(MAXP), **kwargs) -> RocksDBKeyedStateBackend:
        backend = RocksDBKeyedStateBackend(MAXP, groups, base_dir=tmp_path / "work", **kwargs)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


def write_counts(backend, keys, value=0) -> None:
    count = backend.value_state("count")
    for key in keys:
        backend.keys.current_key = key
        count.update(value)


def rows(backend, name):
    column = backend._columns[name]
    column.flush(evict=False)
    return list(column.cf.items())


def test_rows_start_with_the_key_group_then_the_key_then_the_element(backends):
    backend = backends()
    items = backend.list_state("items")
    seen = backend.map_state("seen")
    write_counts(backend, ["a", "b", 7])
    backend.keys.current_key = "a"
    items.add("x")
    items.add("y")
    seen.put(("m", 1), True)
    count_rows = rows(backend, "count")
    assert [r for r, _ in count_rows] == sorted(key_prefix(k, MAXP) for k in ["a", "b", 7])
    for row, _ in count_rows:
        assert int.from_bytes(row[:2], "big") == key_group_of(decode_key(row[3:]), MAXP)
    prefix = key_prefix("a", MAXP)
    assert [r for r, _ in rows(backend, "items")] == [prefix + (0).to_bytes(8, "big"), prefix + (1).to_bytes(8, "big")]
    assert [r for r, _ in rows(backend, "seen")] == [prefix + encode_key(("m", 1))]


def test_a_second_snapshot_after_few_changes_lists_mostly_the_same_files_and_uploads_only_the_new_ones(
        backends, tmp_path):
    store = Store(tmp_path / "store")
    backend = backends()
    write_counts(backend, range(20_000))
    first = backend.snapshot()
    files1 = dict(first.materialize().files)
    store.put(files1)
    first.release()
    uploads = store.uploads
    write_counts(backend, range(10), value=1)
    second = backend.snapshot()
    files2 = dict(second.materialize().files)
    store.put(files2)
    second.release()
    assert set(files1) <= set(files2)
    assert len(set(files2) - set(files1)) == 1, "one new SST: the ten changed keys"
    assert store.uploads == uploads + 1
    new = store.root / (set(files2) - set(files1)).pop()
    assert new.stat().st_size < sum((store.root / k).stat().st_size for k in files1) / 10


def test_a_file_key_always_names_the_same_bytes(backends, tmp_path):
    backend = backends()
    digests: dict[str, str] = {}
    for round_ in range(4):
        write_counts(backend, range(round_ * 1000, (round_ + 1) * 1000))
        snapshot = backend.snapshot()
        for key, path in snapshot.materialize().files.items():
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            assert digests.setdefault(key, digest) == digest
        snapshot.release()
    assert len(digests) >= 4


def test_a_restore_at_the_same_parallelism_opens_the_stored_files_in_place_and_keeps_their_keys(backends, tmp_path):
    store = Store(tmp_path / "store")
    source = backends()
    write_counts(source, range(5000))
    state = complete(source.snapshot(), store)
    restored = backends()
    restored.restore([state])
    linked = [p for p in (restored.directory / "db").iterdir() if p.suffix == ".sst"]
    assert linked and all(os.path.samefile(p, store.root / state.data["sst"][p.name]) for p in linked)
    again = restored.snapshot()
    files = again.materialize().files
    again.release()
    assert set(state.files) <= set(files), "the restored files keep their keys: nothing to upload again"


def test_the_restored_files_are_never_changed(backends, tmp_path):
    store = Store(tmp_path / "store")
    source = backends()
    write_counts(source, range(3000))
    state = complete(source.snapshot(), store)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.root.iterdir()}
    restored = backends()
    restored.restore([state])
    write_counts(restored, range(3000), value=9)
    restored.list_state("items")
    restored._database().compact_range(None, None)
    complete(restored.snapshot(), store)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.root.iterdir()
            if p.name in before} == before


def test_a_restore_into_part_of_the_key_groups_drops_the_others(backends, tmp_path):
    store = Store(tmp_path / "store")
    source = backends()
    write_counts(source, range(2000))
    state = complete(source.snapshot(), store)
    own = key_group_range(MAXP, 4, 1)
    part = backends(own)
    part.restore([state])
    assert sorted(dump(part, {"count": "value"})["count"]) == [k for k in range(2000) if key_group_of(k, MAXP) in own]
    assert [p.name for p in part.directory.iterdir()] == ["db"], "no scratch directory is left behind"


def test_restore_names_a_file_it_was_not_given(backends, tmp_path):
    source = backends()
    write_counts(source, range(10))
    snapshot = source.snapshot()
    parts = snapshot.materialize()
    missing = min(parts.files)
    with pytest.raises(StateError, match=f"lists file '{missing}'"):
        backends().restore([RestoredState(parts.data, {k: v for k, v in parts.files.items() if k != missing})])
    snapshot.release()


def test_writes_skip_the_write_ahead_log(backends):
    backend = backends()
    write_counts(backend, range(1000))
    snapshot = backend.snapshot()
    data = snapshot.materialize().data
    snapshot.release()
    logs = {name: content for name, content in data["inline"].items() if name.endswith(".log")}
    assert logs and all(content == b"" for content in logs.values())


def test_snapshot_data_is_small_and_the_sst_files_are_compressed_with_zstd(backends):
    sizes = {}
    for compression in (None, "none"):
        backend = backends(compression=compression)
        assert backend.compression is None, "chosen when the database opens"
        write_counts(backend, [f"key-{i:06d}" for i in range(50_000)], value="the same long value " * 4)
        snapshot = backend.snapshot(full=True)
        parts = snapshot.materialize()
        sizes[backend.compression] = sum(os.path.getsize(p) for p in parts.files.values())
        snapshot.release()
        assert parts.data["full"] is True
        assert sum(len(c) for c in parts.data["inline"].values()) < 64 * 1024
    assert sizes["zstd"] < sizes["none"] / 3


def test_another_compression_can_be_chosen_and_a_bad_one_is_refused(backends):
    backend = backends(compression="lz4")
    write_counts(backend, range(10))
    assert backend.compression == "lz4"
    with pytest.raises(ValueError, match="compression must be one of zstd, lz4, none"):
        backends(compression="brotli")


def test_release_deletes_the_snapshot_directory_and_close_deletes_the_working_directory(backends):
    backend = backends()
    write_counts(backend, range(10))
    snapshot = backend.snapshot()
    assert not snapshot.path.exists(), "the synchronous part only freezes the object cache"
    snapshot.materialize()
    assert snapshot.path.is_dir()
    snapshot.release()
    assert not snapshot.path.exists()
    backend.close()
    assert not backend.directory.exists()


def test_a_snapshot_still_pending_at_close_keeps_its_files_until_it_is_released(backends):
    backend = backends()
    write_counts(backend, range(10))
    snapshot = backend.snapshot()
    backend.close()
    parts = snapshot.materialize()
    assert all(os.path.exists(p) for p in parts.files.values())
    assert not (backend.directory / "db").exists()
    snapshot.release()
    assert not backend.directory.exists()


def test_the_working_directory_can_be_given_and_must_be_empty(tmp_path):
    given = tmp_path / "given"
    backend = RocksDBKeyedStateBackend(MAXP, range(MAXP), given)
    write_counts(backend, ["k"])
    assert (given / "db").is_dir()
    backend.close()
    assert not given.exists()
    given.mkdir()
    (given / "other").write_text("x")
    with pytest.raises(StateError, match="must be empty"):
        RocksDBKeyedStateBackend(MAXP, range(MAXP), given)


def test_a_closed_backend_refuses_to_be_used(backends):
    backend = backends()
    backend.close()
    with pytest.raises(StateError, match="closed"):
        backend.value_state("v")


@pytest.mark.parametrize(("maxp", "groups"), [(65536, range(65536)), (128, range(0)), (128, range(100, 200))])
def test_key_groups_must_fit_two_bytes_and_the_max_parallelism(maxp, groups, tmp_path):
    with pytest.raises(ValueError, match="max_parallelism|key groups"):
        RocksDBKeyedStateBackend(maxp, groups, base_dir=tmp_path)


def test_metrics_estimate_the_rows_and_bytes(backends):
    backend = backends()
    write_counts(backend, range(1000))
    assert backend.entry_count() == 1000, "the write buffer counts too"
    snapshot = backend.snapshot()
    snapshot.release()
    assert backend.entry_count() == 1000
    assert backend.state_size_bytes() > 1000


def test_the_factory_builds_one_backend_per_subtask_under_its_base_directory(tmp_path):
    factory = RocksDBBackendFactory(base_dir=str(tmp_path / "base"), compression="none", write_batch_entries=2)
    first, second = factory(MAXP, range(64)), factory(MAXP, range(64, 128))
    try:
        assert first.directory != second.directory
        assert first.directory.parent == second.directory.parent == tmp_path / "base"
        write_counts(first, range(5))
        assert first.compression == "none"
    finally:
        first.close()
        second.close()


def test_the_object_cache_is_encoded_at_the_barrier_and_bounded_between_batches(backends, store):
    backend = backends(write_batch_entries=4)
    acc = backend.value_state("acc")
    for i in range(3):
        backend.keys.current_key = f"k{i}"
        acc.update({"n": i})
    column = backend._columns["acc"]
    assert len(column.objects) == 3 and rows(backend, "acc") != []  # rows() writes, the objects stay
    snapshot = backend.snapshot()
    assert column.objects == {}, "the synchronous part encodes and drops every cached object"
    backend.keys.current_key = "k0"
    acc.value()["n"] = 100  # after the barrier: cached again, changed in place
    restored = backends()
    restored.restore([complete(snapshot, store)])
    assert dump(restored, {"acc": "value"})["acc"] == {"k0": {"n": 0}, "k1": {"n": 1}, "k2": {"n": 2}}
    for i in range(3, 9):
        backend.keys.current_key = f"k{i}"
        acc.update({"n": i})
    assert len(column.objects) == 7
    backend.maybe_fold()  # between batches: over write_batch_entries, so written and dropped
    assert column.objects == {}
    assert dump(backend, {"acc": "value"})["acc"]["k0"] == {"n": 100}


def test_large_values_make_the_object_cache_smaller(backends):
    backend = backends(write_batch_entries=1000, write_batch_bytes=64 << 10)
    blobs = backend.value_state("blobs")
    for i in range(20):
        backend.keys.current_key = i
        blobs.update([b"x" * 1024] * 16)  # about 16 KiB encoded
    backend.snapshot().release()  # an eviction measures the rows: 64 KiB hold about 4 of them
    column = backend._columns["blobs"]
    assert column.cache_limit == 16  # never fewer: a cache of a few rows would encode too often
    for i in range(17):
        backend.keys.current_key = i
        blobs.value()
    backend.maybe_fold()
    assert column.objects == {}


# ---- the synchronous part freezes, the asynchronous part cuts (flowstate.state.rocksdb.snapshot) ----


def test_the_synchronous_part_writes_nothing_to_rocksdb_and_the_cut_writes_the_frozen_caches(backends, store):
    backend = backends()
    write_counts(backend, ["a", "b"], value=1)
    column = backend._columns["count"]
    snapshot = backend.snapshot()
    assert column.objects == {} and len(column.frozen) == 1
    assert list(column.cf.items()) == [], "nothing encoded nor written on the task thread"
    state = complete(snapshot, store)
    assert column.frozen == (), "the cut takes its layer out once the checkpoint exists"
    assert len(list(column.cf.items())) == 2
    restored = backends()
    restored.restore([state])
    assert dump(restored, {"count": "value"}) == {"count": {"a": 1, "b": 1}}


def test_while_a_cut_is_pending_the_task_writes_nothing_and_reads_through_the_frozen_layers(backends, store):
    backend = backends(write_batch_entries=2)
    count = backend.value_state("count")
    log = backend.list_state("log")
    index = backend.map_state("index")
    backend.keys.current_key = "k"
    count.update(1)
    log.add("a")
    index.put("x", [1])
    snapshot = backend.snapshot()
    log.clear()
    log.add("b")
    index.get("x").append(2)  # a copy of the frozen object
    index.put("y", 3)
    late = backend.value_state("late")  # a state created while the cut is pending
    for i in range(5):
        backend.keys.current_key = f"n{i}"
        late.update(i)
        count.update(i)
    backend.maybe_fold()  # over write_batch_entries, but the cut is pending: nothing is written
    assert list(backend._columns["late"].cf.items()) == [] and list(backend._columns["count"].cf.items()) == []
    backend.keys.current_key = "k"
    assert (count.value(), log.get(), dict(index.items())) == (1, ["b"], {"x": [1, 2], "y": 3})
    state = complete(snapshot, store)
    restored = backends()
    restored.restore([state])
    assert dump(restored, {"count": "value", "log": "list", "index": "map"}) == {
        "count": {"k": 1}, "log": {"k": ["a"]}, "index": {"k": {"x": [1]}}}
    backend.maybe_fold()  # the cut is done: the top layers are written now
    assert dump(backend, {"count": "value", "log": "list", "index": "map", "late": "value"}) == {
        "count": {"k": 1, **{f"n{i}": i for i in range(5)}}, "log": {"k": ["b"]},
        "index": {"k": {"x": [1, 2], "y": 3}}, "late": {f"n{i}": i for i in range(5)}}


def test_a_cut_made_on_another_thread_while_the_task_writes_holds_the_state_at_its_barrier(backends, store):
    import threading

    backend = backends(write_batch_entries=64)
    count = backend.value_state("count")
    items = backend.list_state("items")
    keys = [f"k{i}" for i in range(500)]
    expected: list[dict] = []
    states = []
    for round_ in range(4):
        for key in keys:
            backend.keys.current_key = key
            count.update(round_)
            items.add(round_)
        backend.maybe_fold()
        expected.append({"count": dict.fromkeys(keys, round_), "items": {k: list(range(round_ + 1)) for k in keys}})
        snapshot = backend.snapshot()
        done: list = []
        worker = threading.Thread(target=lambda s=snapshot, out=done: out.append(complete(s, store)))
        worker.start()
        for key in keys[::7]:  # the task goes on while the cut is made
            backend.keys.current_key = key
            items.clear()
            items.add("gone")
            count.update(-1)
        backend.maybe_fold()
        worker.join()
        states.append(done[0])
        for key in keys[::7]:  # the next round starts from the state at the barrier again
            backend.keys.current_key = key
            items.update(range(round_ + 1))
            count.update(round_)
    for state, want in zip(states, expected, strict=True):
        restored = backends()
        restored.restore([state])
        assert dump(restored, {"count": "value", "items": "list"}) == want


@pytest.mark.parametrize("key", ["", "a", "ключ", "x" * 126, "y" * 127, "z" * 5000, "\ud800", 7, -1, (1, "a"), b"b", 2.5])
def test_the_key_prefix_of_the_current_key_is_the_key_prefix_of_the_key(key):
    from flowstate.state.rocksdb.layout import RocksKeyContext

    keys = RocksKeyContext(MAXP)
    keys.current_key = key
    assert keys.prefix() == key_prefix(key, MAXP)
    keys.current_key = "other"
    keys.prefix()
    keys.current_key = key
    assert keys.prefix() == key_prefix(key, MAXP), "the same once remembered"
