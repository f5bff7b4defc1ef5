"""Fixtures of the keyed state suites: every backend, and snapshots that go through storage.

``make(parallelism, subtask)`` builds a backend of the parametrized kind for that subtask (closed at
the end of the test). ``take(backend)`` runs both parts of a snapshot the way the task runtime does:
the data goes through pickle and the files are copied into a store (as an upload would), then the
snapshot is released, so a restore can only use what was stored.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstate.state.backend import KeyedSnapshot, RestoredState
from flowstate.state.heap_chain import ChainPolicy
from flowstate.state.keygroups import key_group_range
from flowstate.state.memory import HeapKeyedStateBackend
from flowstate.state.rocksdb import RocksDBKeyedStateBackend

MAXP = 128

BACKENDS: dict[str, Callable[..., Any]] = {
    "heap": lambda maxp, groups, base: HeapKeyedStateBackend(maxp, groups),
    # Deltas whatever their size (the states of these suites are small), and a base every fourth snapshot.
    "heap-incremental": lambda maxp, groups, base: HeapKeyedStateBackend(
        maxp, groups, incremental=True, base_dir=base,
        policy=ChainPolicy(max_deltas=3, max_delta_ratio=1e9, max_changed_fraction=1e9)),
    "rocksdb": lambda maxp, groups, base: RocksDBKeyedStateBackend(maxp, groups, base_dir=base),
}


class Store:
    """Stands in for checkpoint storage: keeps each shared file once, under its key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.uploads = 0

    def put(self, files: dict[str, str]) -> dict[str, str]:
        stored = {}
        for key, path in files.items():
            target = self.root / key
            if not target.exists():
                shutil.copyfile(path, target)
                target.chmod(0o444)
                self.uploads += 1
            stored[key] = str(target)
        return stored


def complete(snapshot: KeyedSnapshot, store: Store) -> RestoredState:
    """The asynchronous part, then storage, then release: what a completed checkpoint restores."""
    try:
        parts = snapshot.materialize()
        files = store.put(dict(parts.files))
    finally:
        snapshot.release()
    return RestoredState(pickle.loads(pickle.dumps(parts.data, protocol=pickle.HIGHEST_PROTOCOL)), files)


def dump(backend: Any, kinds: dict[str, str]) -> dict[str, dict[Any, Any]]:
    """Every entry of the states named in ``kinds`` (name -> kind), read through state objects."""
    out: dict[str, dict[Any, Any]] = {}
    for name, kind in kinds.items():
        if kind == "value":
            value = backend.value_state(name)
            read: Callable[[], Any] = value.value
        elif kind == "list":
            read = backend.list_state(name).get
        elif kind == "map":
            state = backend.map_state(name)

            def read(state: Any = state) -> dict[Any, Any]:
                return dict(state.items())
        else:
            read = backend.reducing_state(name, lambda a, b: a + b).get
        entries = {}
        for key in backend.state_keys(name):
            backend.keys.current_key = key
            entries[key] = read()
        out[name] = entries
    return out


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(params=sorted(BACKENDS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    built: list[Any] = []

    def build(parallelism: int = 1, subtask: int = 0, maxp: int = MAXP) -> Any:
        backend = BACKENDS[kind](maxp, key_group_range(maxp, parallelism, subtask), tmp_path / "work")
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


@pytest.fixture
def take(store: Store) -> Callable[[Any], RestoredState]:
    def snapshot_of(backend: Any) -> RestoredState:
        return complete(backend.snapshot(), store)

    return snapshot_of
