"""What only the S3 adapter (``flowstate.storage.s3``) has to prove: the create-only metadata put,
retries through a failing store, a clear error when the store stays down, a slow store, multipart
uploads, the local cache of ``local_path``, and how a location and its options are opened.

The store is moto's server behind a proxy that injects 5xx answers, dropped connections, lost
answers and latency (``object_store.py``).
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote, urlsplit

import pytest

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import Chosen, choose
from flowstate.storage import open_storage
from flowstate.storage.base import CheckpointMetadata, ObjectStoreError
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.s3 import S3CheckpointStorage, parse_s3_url

from .conftest import S3Harness
from .object_store import ACCESS_KEY, BUCKET, REGION, SECRET_KEY
from .test_conformance import payload, restored_id, write_checkpoint


@pytest.fixture
def s3(moto, proxy, faults, tmp_path) -> S3Harness:
    return S3Harness(moto, proxy, tmp_path / "cache")


def requests_to(s3: S3Harness, method: str, path: str) -> int:
    wanted = f"/{BUCKET}/{s3.prefix}/{path}"
    return sum(
        1 for m, target in s3.proxy.faults.requests if m == method and unquote(urlsplit(target).path) == wanted
    )


# --- the create-only metadata put --------------------------------------------------------------


def test_the_store_refuses_a_second_create_only_put_so_the_metadata_put_is_really_conditional(s3):
    import obstore
    from obstore.exceptions import AlreadyExistsError

    obstore.put(s3.direct, "probe", b"first", mode="create")

    with pytest.raises(AlreadyExistsError):
        obstore.put(s3.direct, "probe", b"second", mode="create")
    assert s3.read("probe") == b"first"


def test_a_completed_checkpoint_is_never_replaced_by_other_metadata(s3):
    storage = s3.open()
    written = write_checkpoint(storage, 1)
    raw = s3.read("chk-000001/_metadata")
    other = CheckpointMetadata(**{**{f: getattr(written, f) for f in CheckpointMetadata.__dataclass_fields__}, "final": True})

    with pytest.raises(FileExistsError, match="chk-000001/_metadata already exists with other content"):
        storage.write_metadata(other)

    assert s3.read("chk-000001/_metadata") == raw
    storage.write_metadata(written)  # the same metadata again: idempotent
    assert choose(storage.restore_candidates()) == Chosen(CheckpointId(1), written, ())


def test_a_metadata_put_whose_answer_was_lost_is_retried_and_recognised_as_its_own(s3, faults):
    storage = s3.open()
    metadata = write_checkpoint(storage, 1, {0: ["a.sst"]}, complete=False)
    faults.only_methods = frozenset({"PUT"})
    faults.queued.append("lose")  # the store completes the put; the answer never arrives

    storage.write_metadata(metadata)

    assert faults.injected == [("lose", "PUT", faults.injected[0][2])]
    assert requests_to(s3, "PUT", "chk-000001/_metadata") == 2
    assert choose(storage.restore_candidates()) == Chosen(CheckpointId(1), metadata, ())


# --- a failing store ---------------------------------------------------------------------------


def test_5xx_answers_and_dropped_connections_are_retried_and_the_checkpoint_completes(s3, faults):
    storage = s3.open()
    faults.queued.extend(["500", "drop", "503", "pass", "500", "drop", "pass", "500"])  # 3 in a row at most

    written = write_checkpoint(storage, 1, {0: ["a.sst"], 1: ["b.sst"]})

    assert len(faults.injected) == 6
    assert {fault for fault, _, _ in faults.injected} == {"500", "503", "drop"}
    assert choose(s3.open().restore_candidates()) == Chosen(CheckpointId(1), written, ())


def test_a_store_that_stays_down_fails_the_write_with_an_os_error_naming_the_object(s3, faults):
    storage = s3.open()
    write_checkpoint(storage, 1)
    before = len(faults.requests)
    faults.always = 500

    with pytest.raises(ObjectStoreError, match=r"writing chk-000002/count#0\.state failed: .*500") as raised:
        write_checkpoint(storage, 2)

    assert isinstance(raised.value, OSError)
    assert len(faults.requests) - before == 4  # the first try and 3 retries
    faults.always = None
    assert restored_id(s3.open()) == 1


def test_a_metadata_put_that_keeps_failing_leaves_the_checkpoint_incomplete(s3, faults):
    storage = s3.open()
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    metadata = write_checkpoint(storage, 2, {0: ["a.sst", "b.sst"]}, complete=False)
    faults.only_methods = frozenset({"PUT"})
    faults.always = 503

    with pytest.raises(OSError, match="writing chk-000002/_metadata failed"):
        storage.write_metadata(metadata)

    faults.reset()
    assert not s3.exists("chk-000002/_metadata")
    decision = choose(s3.open().restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    storage.discard(CheckpointId(2))  # the coordinator discards what it could not complete
    assert [p for p in s3.paths() if p.startswith("shared/")] == ["shared/count-0/a.sst"]


def test_an_outage_during_restore_fails_the_restore_instead_of_refusing_the_checkpoints(s3, faults):
    storage = s3.open()
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    faults.only_methods = frozenset({"GET"})
    faults.only_containing = "/chk-000001/"
    faults.always = 500

    with pytest.raises(ObjectStoreError, match="reading chk-000001/"):
        choose(storage.restore_candidates())  # an unreachable store is not a corrupt checkpoint
    with pytest.raises(ObjectStoreError):
        storage.sweep_orphans(0.0, now=2e9)  # nor are its shared files orphans

    faults.reset()
    assert restored_id(storage) == 1
    assert [p for p in s3.paths() if p.startswith("shared/")] == ["shared/count-0/a.sst"]


# --- a slow store ------------------------------------------------------------------------------


def test_a_slow_store_still_completes_restores_and_discards_correctly(s3, faults):
    storage = s3.open(workers=4)
    faults.latency = 0.05

    write_checkpoint(storage, 1, {0: ["a.sst", "b.sst"], 1: ["c.sst"]})
    second = write_checkpoint(storage, 2, {0: ["b.sst"], 1: ["c.sst", "d.sst"]})
    storage.discard(CheckpointId(1))

    assert choose(storage.restore_candidates()) == Chosen(CheckpointId(2), second, ())
    assert [p for p in s3.paths() if p.startswith("shared/")] == [
        "shared/count-0/b.sst", "shared/count-1/c.sst", "shared/count-1/d.sst",
    ]


# --- large files -------------------------------------------------------------------------------


def test_a_large_state_file_goes_up_in_parts_and_a_failed_part_is_retried(s3, faults):
    storage = s3.open(multipart_chunk_size=5 * 1024 * 1024, max_concurrency=2)
    data = payload("large", size=11 * 1024 * 1024)
    faults.only_methods = frozenset({"PUT"})
    faults.queued.extend(["500", "drop"])

    handle = storage.write_state(CheckpointId(1), "count#0.state", data)

    parts = [t for m, t in faults.requests if m == "PUT" and "partNumber=" in t]
    assert len(parts) == 3 + 2  # three parts, two of them sent twice
    assert handle.sha256 == hashlib.sha256(data).hexdigest()
    assert storage.read_state(handle) == data


# --- the local cache ---------------------------------------------------------------------------


def test_local_path_downloads_once_and_replaces_a_damaged_cached_copy(s3, tmp_path):
    storage = s3.open(cache_dir=tmp_path / "cache")
    handle = storage.write_shared("count-0/1.sst", payload("table"))

    first = storage.local_path(handle)
    again = storage.local_path(handle)

    assert first == again == tmp_path / "cache" / handle.sha256
    assert requests_to(s3, "GET", handle.path) == 1
    first.write_bytes(b"damaged on the local disk")

    assert storage.local_path(handle).read_bytes() == payload("table")
    assert requests_to(s3, "GET", handle.path) == 2
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [handle.sha256]


# --- opening a location ------------------------------------------------------------------------


def test_open_storage_picks_the_adapter_from_the_location(s3, tmp_path):
    assert isinstance(open_storage(tmp_path / "a"), LocalCheckpointStorage)
    assert isinstance(open_storage(str(tmp_path / "b")), LocalCheckpointStorage)
    assert open_storage(f"file://{tmp_path}/c").root == tmp_path / "c"
    assert isinstance(s3.open(), S3CheckpointStorage)


def test_credentials_endpoint_and_region_come_from_the_environment_when_not_given(s3, proxy, monkeypatch):
    write_checkpoint(s3.open(), 1)
    for name, value in {
        "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }.items():
        monkeypatch.setenv(name, value)

    storage = open_storage(s3.location)

    assert restored_id(storage) == 1


@pytest.mark.parametrize(
    ("location", "options", "message"),
    [
        ("gs://bucket/x", {}, "unsupported checkpoint storage URL 'gs://bucket/x'"),
        ("s3:///prefix", {}, "not an S3 URL"),
        ("s3://bucket/a//b", {}, "empty, '.' or '..' segment"),
        ("s3://bucket/x", {"endpiont": "http://x"}, "unknown S3 storage option.s. endpiont"),
        ("s3://bucket/x", {"multipart_chunk_size": 1024}, "at least 5 MiB"),
        ("/tmp/somewhere", {"endpoint": "http://x"}, "unknown local storage option.s. endpoint"),
        ("file://host/x", {}, "names a host"),
    ],
)
def test_a_bad_location_or_option_is_refused_with_a_clear_message(location, options, message):
    with pytest.raises(ValueError, match=message):
        open_storage(location, **options)


def test_an_s3_url_gives_its_bucket_and_a_prefix_without_slashes():
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/jobs/word-count/") == ("bucket", "jobs/word-count")


def test_a_storage_sees_only_the_objects_under_its_own_prefix(s3):
    write_checkpoint(s3.open(), 1, {0: ["a.sst"]})

    neighbour = open_storage(s3.location + "-neighbour", **s3.options)

    assert neighbour.highest_id() == 0
    assert neighbour.list_files() == []
    assert s3.open().highest_id() == 1
