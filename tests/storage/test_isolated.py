"""Storage served by a fresh interpreter (``flowstate.storage.isolated``), as forked workers use it
for object storage: every call of the port is forwarded and answered as the storage itself answers,
exceptions included. Run here over a local directory, whose files the test reads directly."""

from __future__ import annotations

import pytest

from flowstate.checkpoint.ids import CheckpointId, task_id
from flowstate.checkpoint.restore import Chosen, choose
from flowstate.storage.base import CheckpointMetadata, CorruptCheckpointError, StateHandle, TaskState
from flowstate.storage.isolated import IsolatedStorage
from flowstate.storage.local import LocalCheckpointStorage


@pytest.fixture
def isolated(tmp_path):
    storage = IsolatedStorage(str(tmp_path / "chk"))
    yield storage
    storage.close()


def test_writes_through_the_server_are_read_back_directly_and_through_it(isolated, tmp_path):
    cid = CheckpointId(1)
    handle = isolated.write_state(cid, "count#0.state", b"state" * 100, codec="zstd")
    (tmp_path / "sst").write_bytes(b"sst bytes")
    shared = isolated.write_shared_many([("count-0/000001.sst", tmp_path / "sst"), ("count-0/000002.sst", b"more")])
    task = TaskState(task_id("count", 0), "count", 0, handle, shared=tuple(shared))
    isolated.write_metadata(CheckpointMetadata(cid, "job", "exactly_once", False, 1.0, 2.0, 8, {"count": 1}, (task,)))

    direct = LocalCheckpointStorage(tmp_path / "chk")
    assert direct.read_state(handle) == b"state" * 100
    assert direct.local_path(shared[0]).read_bytes() == b"sst bytes"
    assert isolated.read_state(handle) == b"state" * 100
    assert isolated.local_path(shared[1]).read_bytes() == b"more"
    decision = choose(isolated.restore_candidates())
    assert isinstance(decision, Chosen) and decision.metadata.checkpoint_id == cid
    assert isolated.highest_id() == 1
    assert [info.checkpoint_id for info in isolated.list_checkpoints()] == [cid]

    isolated.discard(cid)
    assert direct.list_checkpoints() == []


def test_an_error_of_the_storage_is_raised_again_in_the_caller(isolated):
    missing = StateHandle("chk-000001/gone.state", 3, "0" * 64)

    with pytest.raises(CorruptCheckpointError, match="gone.state"):
        isolated.read_state(missing)
    with pytest.raises(ValueError):
        isolated.write_state(CheckpointId(1), "a/b", b"")
    assert isolated.highest_id() == 0, "the server goes on after an error"


def test_a_call_after_the_server_is_gone_raises_an_os_error(isolated):
    isolated.close()

    with pytest.raises(OSError, match="storage server"):
        isolated.highest_id()
