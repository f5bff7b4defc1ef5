"""The clickstream example of the README runs as written and its sessions and per-minute counts
equal a plain batch computation of its generated input."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import flowstate as fs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_clickstream_example_gives_the_batch_sessions_and_counts(tmp_path, monkeypatch):
    subprocess.run([sys.executable, str(EXAMPLES / "make_clicks.py"), "clicks"], cwd=tmp_path, check=True,
                   capture_output=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    flow = runpy.run_path(str(EXAMPLES / "clickstream_sessions.py"))["flow"]
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="200ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )

    clicks: dict[str, list[float]] = defaultdict(list)
    per_minute: Counter = Counter()
    for path in sorted((tmp_path / "clicks").glob("*.csv")):
        for line in path.read_text().splitlines():
            ts, user, url = line.split(",")
            clicks[user].append(float(ts))
            per_minute[(url, float(ts) - float(ts) % 60)] += 1
    sessions: Counter = Counter()
    for user, times in clicks.items():
        times.sort()
        start, end, n = times[0], times[0] + 1800, 0
        for t in times:
            if t > end:
                sessions[(user, round(start, 3), round(end, 3), n)] += 1
                start, n = t, 0
            end, n = max(end, t + 1800), n + 1
        sessions[(user, round(start, 3), round(end, 3), n)] += 1

    def rows(name):
        for path in sorted((tmp_path / "out" / name).iterdir()):
            if not path.name.startswith("."):
                yield from map(json.loads, path.read_text().splitlines())

    got_sessions = Counter((u, round(s, 3), round(e, 3), n) for u, s, e, n in rows("sessions"))
    got_minutes: Counter = Counter()
    for url, start, count in rows("per_minute"):
        got_minutes[(url, start)] += count
    assert got_sessions == sessions
    assert got_minutes == per_minute
