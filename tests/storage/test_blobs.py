"""The blob-store port (``flowstate.storage.blobs``), run over every adapter: a local directory, an S3
bucket (moto behind a faulty proxy) and memory. The catalogue's conformance suite
(``test_conformance.py``) runs over the same three."""

from __future__ import annotations

import hashlib

import pytest

from flowstate.failpoints import Failpoints, InjectedFailure

from .conftest import Harness


def store_of(harness: Harness, **options):
    return harness.open(**options).store


def test_put_stores_bytes_or_a_local_file_and_returns_their_size_and_digest(harness, tmp_path):
    store = store_of(harness)
    source = tmp_path / "table.sst"
    source.write_bytes(b"from a file")

    assert store.put("chk-000001/a.state", b"bytes") == (5, hashlib.sha256(b"bytes").hexdigest())
    assert store.put("shared/k/table.sst", source) == (11, hashlib.sha256(b"from a file").hexdigest())
    assert store.get("chk-000001/a.state") == b"bytes"
    assert harness.read("shared/k/table.sst") == b"from a file"


def test_put_replaces_and_put_if_absent_never_does(harness):
    store = store_of(harness)
    store.put("chk-000001/a.state", b"first")
    store.put("chk-000001/a.state", b"second")

    assert store.put_if_absent("chk-000001/_metadata", b"complete") is True
    assert store.put_if_absent("chk-000001/_metadata", b"other") is False

    assert store.get("chk-000001/a.state") == b"second"
    assert store.get("chk-000001/_metadata") == b"complete"


def test_a_missing_blob_raises_on_get_and_is_none_for_scan_and_head(harness):
    store = store_of(harness)

    with pytest.raises(FileNotFoundError):
        store.get("chk-000001/none.state")
    assert store.scan("chk-000001/none.state") is None
    assert store.head("chk-000001/none.state") is None


def test_scan_hashes_what_it_streams_and_reads_nothing_when_the_size_is_not_the_expected_one(harness):
    store = store_of(harness)
    data = bytes(range(256)) * 64
    store.put("shared/k/1.sst", data)
    received: list[bytes] = []

    scanned = store.scan("shared/k/1.sst", received.append)
    other = store.scan("shared/k/1.sst", received.append, expected_size=len(data) - 1)

    assert (scanned.size, scanned.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(received) == data, "the wrong size streamed nothing"
    assert (other.size, other.sha256) == (len(data), None)


def test_head_gives_the_size_and_a_recorded_digest_only_if_the_store_keeps_one(harness):
    store = store_of(harness)
    store.put("shared/k/1.sst", b"table")

    found = store.head("shared/k/1.sst")

    assert found.size == 5 and found.modified > 0
    assert found.sha256 in (None, hashlib.sha256(b"table").hexdigest())
    assert (found.sha256 is None) is (harness.kind == "local")


def test_list_and_directories_see_every_blob_under_a_directory_at_any_depth(harness):
    store = store_of(harness)
    for path in ("chk-000001/a.state", "chk-000001/_metadata", "shared/k/1.sst", "shared/top.sst"):
        store.put(path, b"x")

    assert sorted(f.path for f in store.list("shared")) == ["shared/k/1.sst", "shared/top.sst"]
    assert sorted(f.path for f in store.list("chk-000001")) == ["chk-000001/_metadata", "chk-000001/a.state"]
    assert store.list("chk-000002") == []
    assert sorted(store.directories()) == ["chk-000001", "shared"]


def test_delete_and_delete_directory_are_idempotent(harness):
    store = store_of(harness)
    store.put("chk-000001/a.state", b"x")
    store.put("chk-000001/b.state", b"y")
    store.put("shared/k/1.sst", b"z")

    store.delete(["chk-000001/a.state", "chk-000001/gone.state"])
    store.delete(["chk-000001/a.state"])
    store.delete_directory("chk-000001")
    store.delete_directory("chk-000001")
    store.delete_directory("chk-000009")

    assert harness.paths() == ["shared/k/1.sst"]


def test_only_a_directory_hands_out_its_own_file(harness):
    store = store_of(harness)
    store.put("shared/k/1.sst", b"table")

    local = store.local_file("shared/k/1.sst")

    assert (local is not None) is (harness.kind == "local")
    assert local is None or local.read_bytes() == b"table"


@pytest.mark.parametrize("point", ["torn", "before_publish"])
def test_a_failure_at_a_write_failpoint_leaves_no_blob_under_its_name(harness, point):
    failpoints = Failpoints({"storage.metadata_torn": "raise", "storage.metadata_before_rename": "raise"})
    store = store_of(harness, failpoints=failpoints)
    names = {"torn": "storage.metadata_torn", "before_publish": "storage.metadata_before_rename"}

    with pytest.raises(InjectedFailure):
        store.put_if_absent("chk-000001/_metadata", b"complete", **{point: names[point]})

    assert harness.paths() == []
