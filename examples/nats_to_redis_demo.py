"""Run examples/nats_to_redis.py, kill it with SIGKILL a few times, let it finish, and check what
arrived in Redis against a plain batch count of the input.

    python examples/nats_to_redis_demo.py [--lines 20000] [--kills 3]
    python examples/nats_to_redis_demo.py --publish words [--lines 20000]   # only publish the input

``--publish STREAM`` creates the JetStream stream STREAM, publishes the lines to it and exits: the
input of ``DEMO_STREAM=STREAM flowstate chaos examples/nats_to_redis.py`` (see docs/connectors.md).

Needs NATS with JetStream on 127.0.0.1:4222 and Redis on 127.0.0.1:6379 (``pip install
'flowstate[brokers]'``). Creates a JetStream stream and Redis keys with a fresh name, and deletes
them at the end. Exit status 0 when the output is every (word, n) exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

JOB = Path(__file__).with_name("nats_to_redis.py")
NATS = "nats://127.0.0.1:4222"
REDIS = "redis://127.0.0.1:6379"
RESTORING = re.compile(r"restoring from checkpoint (\d+)")


def make_lines(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{k}" for k in range(500)]
    weights = [1.0 / (k + 1) for k in range(len(vocabulary))]
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(3, 10))) for _ in range(count)]


async def _publish(stream: str, lines: list[str]) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(NATS)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.*"], duplicate_window=900))
    for start in range(0, len(lines), 500):
        await asyncio.gather(*(js.publish(f"{stream}.{i % 2}", line.encode())
                               for i, line in enumerate(lines[start:start + 500], start)))
    await nc.close()


async def _delete(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS)
    await nc.jetstream().delete_stream(stream)
    await nc.close()


def publish(stream: str, lines: list[str]) -> None:
    asyncio.run(_publish(stream, lines))


def delete_stream(stream: str) -> None:
    asyncio.run(_delete(stream))


def expected_records(lines: list[str]) -> Counter[tuple[str, int]]:
    counts = Counter(word for line in lines for word in line.split())
    return Counter((word, n) for word, c in counts.items() for n in range(1, c + 1))


def read_output(key: str) -> Counter[tuple[str, int]]:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        return Counter(tuple(json.loads(fields[b"data"])) for _, fields in client.xrange(key))
    finally:
        client.close()


def latest_checkpoint(chk: Path) -> int:
    """The highest id of a completed checkpoint in ``chk`` (0: none)."""
    if not chk.exists():
        return 0
    return max((int(d.name.split("-")[1]) for d in chk.glob("chk-*") if (d / "_metadata").exists()), default=0)


def start(workdir: Path, env: dict[str, str], run: int, mode: str, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    stderr = workdir / f"run-{run}.stderr"
    command = [sys.executable, "-m", "flowstate", "run", str(JOB), "--checkpoint-dir", str(workdir / "chk"),
               "--mode", mode, "--interval", "100ms", *(extra or [])]
    with open(stderr, "wb") as f:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                   cwd=workdir, env=env)
    return process, stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--mode", default="exactly_once")
    parser.add_argument("--publish", metavar="STREAM", help="only create the stream STREAM with the input, and exit")
    args = parser.parse_args()
    if args.publish:
        publish(args.publish, make_lines(args.lines, seed=13))
        print(f"published {args.lines} lines to the JetStream stream {args.publish} (subjects {args.publish}.0/1)")
        return 0
    name = f"demo{uuid.uuid4().hex[:10]}"
    lines = make_lines(args.lines, seed=13)
    publish(name, lines)
    rng = random.Random(name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            env = dict(os.environ, DEMO_STREAM=name, DEMO_OUT=f"{name}:out", DEMO_NATS=NATS, DEMO_REDIS=REDIS)
            run = 0
            for _ in range(args.kills):
                run += 1
                before = latest_checkpoint(workdir / "chk")
                process, _ = start(workdir, env, run, args.mode)
                # Killed shortly after a new checkpoint completed: the next run has something to restore.
                while process.poll() is None and latest_checkpoint(workdir / "chk") <= before:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
                process.wait()
                print(f"run {run}: killed after checkpoint {latest_checkpoint(workdir / 'chk')} (exit {process.returncode})")
            run += 1
            process, stderr = start(workdir, env, run, args.mode)
            process.wait(timeout=600)
            restored = RESTORING.findall(stderr.read_text())
            print(f"run {run}: exit {process.returncode}, restored from checkpoint {restored[-1] if restored else 'none'}")
            if process.returncode != 0:
                print(stderr.read_text()[-2000:], file=sys.stderr)
                return 1
        actual, expected = read_output(f"{name}:out"), expected_records(lines)
        missing, extra = expected - actual, actual - expected
        print(f"Redis stream {name}:out: {sum(actual.values())} records, {sum(missing.values())} missing, "
              f"{sum(extra.values())} extra (expected {sum(expected.values())})")
        return 0 if not missing and not extra else 1
    finally:
        delete_stream(name)
        import redis

        client = redis.Redis.from_url(REDIS)
        client.delete(f"{name}:out", f"{name}:out:flowstate-committed")
        client.close()


if __name__ == "__main__":
    sys.exit(main())
