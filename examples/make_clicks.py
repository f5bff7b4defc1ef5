"""Writes a synthetic clickstream for examples/clickstream_sessions.py.

    python examples/make_clicks.py clicks        # clicks/part-0.csv … part-3.csv

Each line is ``ts,user,url`` (``ts`` in seconds since the epoch). 200 users browse over one day in
bursts: a user clicks every 5 s to 10 min, and pauses 30 min or more between visits. The files are
rotated every 6 hours, as logs are (part-0 holds 00:00-06:00, part-1 06:00-12:00, …), and lines are a
little out of order (up to 4 s), as events collected from several web servers are. Seeded: the same
command writes the same files.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

START = 1_767_225_600.0  # 2026-01-01 00:00 UTC
FILES = 4


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "clicks")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2026)
    events = []
    for u in range(200):
        t = START + rng.uniform(0, 3600)
        while t < START + 86_400:
            for _ in range(rng.randint(1, 30)):
                events.append((t, f"user{u:03d}", f"/page/{rng.randint(1, 50)}"))
                t += rng.uniform(5, 600)
            t += rng.uniform(1800, 4 * 3600)
    events.sort()
    shuffled = [(ts + rng.uniform(-4, 0), user, url) for ts, user, url in events]  # collected a bit late
    span = 86_400 / FILES
    per_file: list[list[tuple[float, str, str]]] = [[] for _ in range(FILES)]
    for row in shuffled:
        per_file[min(int((row[0] - START) // span), FILES - 1)].append(row)
    for i, rows in enumerate(per_file):
        with open(out / f"part-{i}.csv", "w", encoding="utf-8") as f:
            for ts, user, url in rows:
                f.write(f"{ts:.3f},{user},{url}\n")
    print(f"{len(events)} clicks in {FILES} files under {out}/")


if __name__ == "__main__":
    main()
