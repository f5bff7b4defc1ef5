"""Jobs whose checkpoints live in an S3-compatible bucket (moto's server, on loopback): a crash
restores from a checkpoint read back from the bucket, with heap state and with incremental RocksDB
state whose shared files are uploaded once and referenced by later checkpoints."""

from __future__ import annotations

from collections import Counter

import pytest

import flowstate as fs
from flowstate.storage.factory import open_storage

from storage.object_store import BUCKET, require_moto, unique_prefix

from .jobs import (
    FAST_RESTART,
    INPUT_LINES,
    INTERVAL,
    RATE,
    assert_restored_from_a_checkpoint,
    batch_reference,
    committed_output,
    difference,
    generator_source,
    lines,
    wordcount,
)


@pytest.fixture(scope="module")
def moto():
    server = require_moto()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    return f"s3://{BUCKET}/{unique_prefix()}"


@pytest.mark.parametrize("backend", ["heap", "rocksdb"])
def test_a_job_restores_from_a_checkpoint_in_object_storage_after_a_crash(backend, bucket, dirs, tmp_path, expected):
    failpoints = fs.Failpoints({"coordinator.metadata_before_notify": "raise@3"})
    flow = wordcount(dirs.output, source=generator_source(INPUT_LINES, rate=RATE), parallelism=2)

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=bucket, interval=INTERVAL, retained=2),
        state=fs.StateOptions(backend=backend, directory=tmp_path / "rocksdb"),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        failpoints=failpoints,
    )

    assert failpoints.fired("coordinator.metadata_before_notify") == 1
    assert_restored_from_a_checkpoint(result, INPUT_LINES)
    actual = committed_output(dirs.output)
    assert Counter(actual) == expected, difference(actual, expected)
    storage = open_storage(bucket)
    retained = [info.metadata for info in storage.list_checkpoints() if info.metadata is not None]
    assert len(retained) == 2
    if backend == "rocksdb":
        # Every SST file of the newest checkpoint is a shared object of the bucket (compactions may
        # have replaced the older ones: which files two checkpoints share is tested on local storage).
        newest = retained[-1]
        assert all(h.path.startswith("shared/") for t in newest.tasks for h in t.shared)
        assert any(t.shared for t in newest.tasks)


def test_worker_processes_restore_from_checkpoints_in_object_storage_after_a_worker_is_killed(bucket, dirs):
    # Each worker process reaches the bucket through a client of its own and loads its own tasks'
    # state from it.
    lines_in = 3 * INPUT_LINES
    failpoints = fs.Failpoints({"task.before_snapshot": "kill@9"})  # 4 tasks: in checkpoint 3
    flow = wordcount(dirs.output, source=generator_source(lines_in, rate=RATE), parallelism=2)

    result = fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=bucket, interval=INTERVAL),
        recovery=fs.RecoveryOptions(restart=FAST_RESTART),
        execution=fs.ExecutionOptions(executor="processes", workers=2),
        failpoints=failpoints,
    )

    assert (result.executor, result.workers) == ("processes", 2)
    assert failpoints.fired("task.before_snapshot") == 1
    assert any("was killed by SIGKILL" in f for f in result.failures), result.failures
    assert_restored_from_a_checkpoint(result, lines_in)
    actual = committed_output(dirs.output)
    expected = batch_reference(lines(lines_in))
    assert Counter(actual) == expected, difference(actual, expected)
