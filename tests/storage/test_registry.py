"""The reference counts of shared files (``flowstate.storage.registry``), pure: a file is released
exactly when the last checkpoint referencing it is unregistered."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from flowstate.checkpoint.ids import CheckpointId, TaskId
from flowstate.storage.base import CheckpointMetadata, StateHandle, TaskState
from flowstate.storage.registry import SharedStateRegistry, shared_files


def handle(path: str) -> StateHandle:
    return StateHandle(path, 1, hashlib.sha256(path.encode()).hexdigest())


def shared(*names: str) -> list[StateHandle]:
    return [handle(f"shared/t/{name}") for name in names]


def test_a_file_is_released_when_the_last_checkpoint_referencing_it_is_unregistered():
    registry = SharedStateRegistry()
    registry.register(CheckpointId(1), shared("a", "b"))
    registry.register(CheckpointId(2), shared("b", "c"))

    assert registry.unregister(CheckpointId(1)) == ["shared/t/a"]
    assert registry.count("shared/t/b") == 1
    assert registry.unregister(CheckpointId(2)) == ["shared/t/b", "shared/t/c"]
    assert registry.referenced() == frozenset()


def test_unregistering_an_unknown_checkpoint_or_the_same_one_twice_releases_nothing():
    registry = SharedStateRegistry()
    registry.register(CheckpointId(1), shared("a"))

    assert registry.unregister(CheckpointId(7)) == []
    assert registry.unregister(CheckpointId(1)) == ["shared/t/a"]
    assert registry.unregister(CheckpointId(1)) == []


def test_a_file_listed_twice_by_one_checkpoint_counts_once():
    registry = SharedStateRegistry()
    registry.register(CheckpointId(1), shared("a", "a"))

    assert registry.count("shared/t/a") == 1
    assert registry.unregister(CheckpointId(1)) == ["shared/t/a"]


def test_registering_a_checkpoint_again_replaces_its_files_and_releases_the_dropped_ones():
    registry = SharedStateRegistry()
    registry.register(CheckpointId(1), shared("a", "b"))
    registry.register(CheckpointId(2), shared("b"))

    released = registry.register(CheckpointId(1), shared("b", "c"))

    assert released == ["shared/t/a"]
    assert (registry.count("shared/t/b"), registry.count("shared/t/c")) == (2, 1)
    assert registry.checkpoints() == {1, 2}


def test_the_registry_rebuilt_from_metadata_counts_only_files_under_shared():
    def metadata(checkpoint_id: int, *names: str) -> CheckpointMetadata:
        own = handle(f"chk-{checkpoint_id:06d}/own.sst")
        task = TaskState(TaskId("t#0"), "t", 0, handle(f"chk-{checkpoint_id:06d}/t#0.state"), shared=(*shared(*names), own))
        return CheckpointMetadata(CheckpointId(checkpoint_id), "j", "exactly_once", False, 0.0, 1.0, 8, {}, (task,))

    registry = SharedStateRegistry.from_metadata([metadata(1, "a"), metadata(2, "a", "b")])

    assert shared_files(metadata(2, "a", "b")) == tuple(shared("a", "b"))
    assert registry.referenced() == {"shared/t/a", "shared/t/b"}
    assert registry.count("shared/t/a") == 2
    assert 1 in registry and 3 not in registry


_operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister"]),
        st.integers(min_value=1, max_value=5),
        st.sets(st.sampled_from("abcdef"), max_size=4),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_operations)
def test_released_files_are_exactly_those_no_registered_checkpoint_still_references(operations):
    registry = SharedStateRegistry()
    model: dict[int, set[str]] = {}
    for operation, checkpoint_id, names in operations:
        before = set().union(*model.values()) if model else set()
        if operation == "register":
            released = registry.register(CheckpointId(checkpoint_id), shared(*sorted(names)))
            model[checkpoint_id] = {f"shared/t/{n}" for n in names}
        else:
            released = registry.unregister(CheckpointId(checkpoint_id))
            model.pop(checkpoint_id, None)
        after = set().union(*model.values()) if model else set()
        assert sorted(released) == released
        assert set(released) == before - after
        assert registry.referenced() == after
        for path in after:
            assert registry.count(path) == sum(path in files for files in model.values())
