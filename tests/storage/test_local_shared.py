"""Local storage (``flowstate.storage.local``) beyond the common suite: the durability order of shared
files, the order of deletions, the age of files, and crashes (a real process killed at the storage
failpoints) that leave debris behind.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import CandidateStatus, Chosen, Invalid, choose
from flowstate.storage.format import NO_METADATA
from flowstate.storage.local import LocalCheckpointStorage

from .test_conformance import write_checkpoint

GRACE = 600.0


@pytest.fixture
def storage(tmp_path: Path) -> LocalCheckpointStorage:
    return LocalCheckpointStorage(tmp_path / "checkpoints")


def test_a_shared_file_is_fsynced_renamed_and_its_new_directories_fsynced_in_their_parents(storage, monkeypatch):
    events: list[tuple[str, int | str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append((f"fsync {'dir' if stat.S_ISDIR(info.st_mode) else 'file'}", info.st_ino))
        real_fsync(fd)

    def replace(source: os.PathLike[str], target: os.PathLike[str]) -> None:
        events.append(("replace", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    storage.write_shared("count-0/1.sst", b"table")

    named = [(what, _name_of_inode(storage.root, x) if isinstance(x, int) else x) for what, x in events]
    assert named == [
        ("fsync dir", "checkpoints"),  # shared/ made durable in the root
        ("fsync dir", "shared"),  # shared/count-0/ made durable in shared/
        ("fsync file", "1.sst"),  # (the temporary file, renamed since)
        ("replace", "1.sst"),
        ("fsync dir", "count-0"),
    ]


def _name_of_inode(root: Path, inode: int) -> str:
    if root.stat().st_ino == inode:
        return root.name
    for path in root.rglob("*"):
        if path.stat().st_ino == inode:
            return path.name
    return "?"


def test_discard_deletes_the_metadata_before_any_shared_file_it_releases(storage, monkeypatch):
    write_checkpoint(storage, 1, {0: ["a.sst"], 1: ["b.sst"]})
    unlinked: list[str] = []
    real_unlink = os.unlink

    def unlink(path: os.PathLike[str] | str) -> None:
        unlinked.append(Path(path).relative_to(storage.root).as_posix())
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)

    storage.discard(CheckpointId(1))

    assert unlinked[0] == "chk-000001/_metadata"
    assert unlinked[-2:] == ["shared/count-0/a.sst", "shared/count-1/b.sst"]


def test_writing_stored_bytes_again_refreshes_the_age_of_a_file_no_checkpoint_references(storage):
    handle = storage.write_shared("count-0/1.sst", b"table")
    path = storage.root / handle.path
    long_ago = time.time() - 10 * GRACE
    os.utime(path, (long_ago, long_ago))

    again = storage.write_shared("count-0/1.sst", b"table")

    assert again == handle
    assert path.stat().st_mtime > long_ago + GRACE
    assert storage.sweep_orphans(GRACE, now=time.time()) == []


def test_sweep_orphans_deletes_old_temporary_files_and_keeps_young_ones(storage):
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    old = [storage.root / "shared" / "count-0" / ".b.sst.tmp-0ff1ce", storage.root / "chk-000001" / ".count#0.state.tmp-5eed"]
    young = storage.root / "shared" / "count-0" / ".c.sst.tmp-beef"
    for path in [*old, young]:
        path.write_bytes(b"half a write")
    long_ago = time.time() - 2 * GRACE
    for path in old:
        os.utime(path, (long_ago, long_ago))

    removed = storage.sweep_orphans(GRACE, now=time.time())

    assert removed == ["chk-000001/.count#0.state.tmp-5eed", "shared/count-0/.b.sst.tmp-0ff1ce"]
    assert young.exists()
    assert choose(storage.restore_candidates()).checkpoint_id == 1


def test_a_key_may_be_a_single_segment_directly_under_shared(storage):
    handle = storage.write_shared("manifest-7", b"m")

    assert handle.path == "shared/manifest-7"
    assert (storage.root / "shared" / "manifest-7").read_bytes() == b"m"


# --- real crashes ------------------------------------------------------------------------------

_CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from flowstate.failpoints import Failpoints
    from flowstate.storage.local import LocalCheckpointStorage
    from tests.storage.test_conformance import write_checkpoint

    root, point = sys.argv[1], sys.argv[2]
    storage = LocalCheckpointStorage(root, failpoints=Failpoints({point: "kill@2"}))
    write_checkpoint(storage, 1, {0: ["a.sst"]})
    write_checkpoint(storage, 2, {0: ["a.sst", "b.sst"]})
    print("the failpoint did not fire")
    """
)


@pytest.mark.parametrize(
    ("point", "metadata_left"),
    [("storage.metadata_torn", "half"), ("storage.metadata_before_rename", "whole")],
)
def test_a_process_killed_while_writing_the_metadata_leaves_debris_that_is_never_restored_from(
    tmp_path, point, metadata_left
):
    root = tmp_path / "checkpoints"
    repository = Path(__file__).resolve().parents[2]

    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, str(root), point],
        cwd=repository, capture_output=True, text=True, timeout=60, check=False,
    )

    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    leftovers = [p for p in (root / "chk-000002").iterdir() if p.name.startswith("._metadata.tmp-")]
    assert len(leftovers) == 1
    complete = (root / "chk-000001" / "_metadata").stat().st_size
    left = leftovers[0].stat().st_size
    assert (left < complete) if metadata_left == "half" else (left >= complete - 10)
    storage = LocalCheckpointStorage(root)
    decision = choose(storage.restore_candidates())
    assert isinstance(decision, Chosen) and decision.checkpoint_id == 1
    assert decision.skipped == (Invalid(CheckpointId(2), NO_METADATA, CandidateStatus.INCOMPLETE),)
    assert storage.sweep(keep=set()) == [2]
    assert storage.sweep_orphans(GRACE, now=time.time() + 2 * GRACE) == ["shared/count-0/b.sst"]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "chk-000001/_metadata", "chk-000001/count#0.state", "chk-000001/count#1.state", "shared/count-0/a.sst",
    ]
