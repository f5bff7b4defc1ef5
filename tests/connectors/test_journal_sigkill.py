"""End to end under SIGKILL: ``flowstate run examples/webhook_journal.py`` (a journaled
``HttpSource`` → upper-case → ``FileSink``) is killed at random moments while a sender POSTs distinct
events, retrying each until it sees the 200; each time the job is run again on the same port, journal
and checkpoints, and at last stopped with SIGTERM (a last checkpoint, output committed).

The journal's guarantee, as docs/ingress-journal.md states it: an event acknowledged at its first
attempt is in the output exactly once; an event acknowledged after retries is there at least once and
at most as often as it was attempted. Kills land after a checkpoint completed that covers records
the previous kill's did not, so the restores skip input (``restoring from checkpoint N``, N >= 1).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from .conftest import covered_lines

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "examples" / "webhook_journal.py"
EVENTS = 400
KILLS = 3
PACE = 0.004
"""Seconds between two events of the sender: the sending lasts long enough for the kills."""
RUN_TIMEOUT = 60.0
RESTORING = re.compile(r"restoring from checkpoint (\d+)")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sender(threading.Thread):
    """POSTs ``event i`` for i < EVENTS, each retried until answered 200."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/events"
        self.attempts: Counter[str] = Counter()
        self.acknowledged: list[str] = []

    def run(self) -> None:
        for i in range(EVENTS):
            body = f"event {i}"
            while True:
                self.attempts[body] += 1
                try:
                    with urllib.request.urlopen(urllib.request.Request(self.url, data=body.encode()),
                                                timeout=2) as answer:
                        if answer.status == 200:
                            self.acknowledged.append(body)
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    time.sleep(0.02)  # the job is down or starting: try again
            time.sleep(PACE)


def read_output(directory: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for path in sorted(directory.iterdir()) if directory.exists() else []:
        if not path.name.startswith("."):
            out.update(json.loads(line) for line in path.read_text().splitlines())
    return out


def test_a_journaled_webhook_job_killed_at_random_moments_processes_every_acknowledged_event(tmp_path: Path) -> None:
    port, journal, out, chk = free_port(), tmp_path / "journal", tmp_path / "out", tmp_path / "chk"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSTATE_FAILPOINTS")}
    env.update(WEBHOOK_PORT=str(port), WEBHOOK_JOURNAL=str(journal), WEBHOOK_OUT=str(out))
    runs: list[tuple[subprocess.Popen[bytes], Path]] = []
    rng = random.Random(2026)

    def start() -> subprocess.Popen[bytes]:
        stderr = tmp_path / f"run-{len(runs) + 1}.stderr"
        command = [sys.executable, "-m", "flowstate", "run", str(JOB), "--checkpoint-dir", str(chk),
                   "--interval", "100ms"]
        with open(stderr, "wb") as f:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                       cwd=tmp_path, env=env)
        runs.append((process, stderr))
        return process

    def describe() -> str:
        return "\n".join(f"run {k + 1}: exit {p.returncode}: {e.read_text(errors='replace')[-1500:]}"
                         for k, (p, e) in enumerate(runs))

    def restored(k: int) -> int:
        found = RESTORING.findall(runs[k][1].read_text(errors="replace"))
        return int(found[-1]) if found else 0

    sender = Sender(port)
    sender.start()
    try:
        covered, kills_while_sending = 0, 0
        for _ in range(KILLS):
            process = start()
            give_up = time.monotonic() + RUN_TIMEOUT
            # Kill once a checkpoint completed that covers records the last kill's did not (or, the
            # sender being done, after any new checkpoint): the restore then has something to skip.
            while process.poll() is None and covered_lines(chk) <= covered and sender.is_alive():
                assert time.monotonic() < give_up, f"no new checkpoint: {describe()}"
                time.sleep(0.005)
            covered = covered_lines(chk)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment after it
            kills_while_sending += sender.is_alive()
            process.send_signal(signal.SIGKILL)
            assert process.wait() == -signal.SIGKILL, f"the run ended before its kill: {describe()}"
        last = start()
        sender.join(timeout=RUN_TIMEOUT)
        assert not sender.is_alive(), f"the sender did not finish: {describe()}"
        give_up = time.monotonic() + RUN_TIMEOUT
        while not all(read_output(out)[body.upper()] for body in sender.acknowledged):
            assert last.poll() is None and time.monotonic() < give_up, f"acknowledged events missing: {describe()}"
            time.sleep(0.05)
        last.send_signal(signal.SIGTERM)  # a graceful stop: a last checkpoint, output committed
        assert last.wait(timeout=RUN_TIMEOUT) == 3, describe()
    finally:
        for process, _ in runs:
            if process.poll() is None:
                process.kill()
                process.wait()
        sender.join(timeout=5)

    assert len(sender.acknowledged) == EVENTS
    output = read_output(out)
    for body in sender.acknowledged:
        seen = output[body.upper()]
        if sender.attempts[body] == 1:
            assert seen == 1, f"{body!r}, acknowledged at its first attempt, was processed {seen} times"
        else:
            assert 1 <= seen <= sender.attempts[body], f"{body!r}: {sender.attempts[body]} attempts, seen {seen}"
    assert set(output) == {body.upper() for body in sender.acknowledged}, "output that no one sent"
    assert kills_while_sending >= 1, "every kill came after the sender was done"
    assert max(restored(k) for k in range(1, len(runs))) >= 1, f"no run restored a checkpoint: {describe()}"
    assert restored(len(runs) - 1) >= 1, f"the last run did not restore a checkpoint: {describe()}"
    assert sorted(p.name for p in journal.iterdir() if p.name.startswith("seg-")) == [], \
        "a journal segment was left behind after the graceful end"
