"""A checkpoint directory that cannot be written stops ``flowstate run`` at once: exit 2 and one line
``cannot write to checkpoint directory X: …``, no traceback, nothing run."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import flowstate as fs
from flowstate import cli

JOB = '''\
import flowstate as fs

flow = fs.Dataflow("copy")
flow.source(fs.GeneratorSource(lambda i: i, count=10)).sink(fs.FileSink({output!r}))
'''


def run_job(tmp_path: Path, checkpoint_dir: str) -> subprocess.CompletedProcess[str]:
    job = tmp_path / "job.py"
    job.write_text(JOB.format(output=str(tmp_path / "out")))
    return subprocess.run([sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", checkpoint_dir,
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def assert_refused(result: subprocess.CompletedProcess[str], directory: str, why: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"flowstate: error: cannot write to checkpoint directory {directory}{why}"]


def test_a_checkpoint_directory_that_is_a_file_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "chk").write_text("not a directory")

    result = run_job(tmp_path, "chk")

    assert_refused(result, "chk", ": it is a file")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_directory_below_a_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("")

    assert_refused(run_job(tmp_path, "runs/chk"), "runs/chk", ": runs is a file, not a directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_checkpoint_directory_without_write_permission_exits_2(tmp_path: Path) -> None:
    locked = tmp_path / "chk"
    locked.mkdir(mode=0o555)
    try:
        assert_refused(run_job(tmp_path, "chk"), "chk", ": Permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir() or os.access("/sys", os.W_OK) and os.geteuid() != 0,
                    reason="needs Linux sysfs, where nobody may create a file")
def test_a_checkpoint_directory_where_no_file_may_be_created_exits_2(tmp_path: Path) -> None:
    result = run_job(tmp_path, "/sys/flowstate-checkpoints")

    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        "flowstate: error: cannot write to checkpoint directory /sys/flowstate-checkpoints (creating it in /sys): ")


def test_a_checkpoint_directory_on_a_read_only_file_system_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A read-only mount needs privileges a test does not have: the file system's answer is simulated.
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    job = tmp_path / "job.py"
    job.write_text(JOB.format(output=str(tmp_path / "out")))
    (tmp_path / "chk").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)

    code = cli.main(["run", str(job), "--checkpoint-dir", str(tmp_path / "chk"), "--quiet"])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"flowstate: error: cannot write to checkpoint directory {tmp_path / 'chk'}: Read-only file system"]


def test_fs_run_refuses_an_unwritable_checkpoint_directory_with_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "chk").write_text("")
    flow = fs.Dataflow("copy")
    flow.source(fs.GeneratorSource(lambda i: i, count=10)).sink(fs.FileSink(tmp_path / "out"))

    with pytest.raises(fs.ConfigError, match="cannot write to checkpoint directory .*chk: it is a file"):
        fs.run(flow, checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk"))
