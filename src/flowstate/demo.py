"""``flowstate demo``: a parallel word count that is killed with SIGKILL, resumes, and is checked.

Step 1: generate text files (a fixed seed, so every run checks the same numbers).
Step 2: run ``flowstate run`` on a word-count job in a child process, exactly-once, checkpoints
        every 0.5 s; once ``kill_after`` checkpoints have completed, kill it with SIGKILL.
Step 3: run the very same command again: it restores the latest completed checkpoint and finishes.
Step 4: compare the committed output with a plain batch count of the same input: every (word, n)
        for n = 1..count(word) exactly once, nothing else.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import flowstate as fs

JOB = '''\
"""The demo job: a running word count, exactly-once into JSON Lines files."""
import flowstate as fs
from flowstate.demo import Count

flow = fs.Dataflow("demo-wordcount", parallelism={parallelism})
(flow.source(fs.FileSource({input!r}), uid="lines")
     .flat_map(str.split, uid="words")
     .key_by(lambda word: word)
     .process(Count(), uid="count")
     .sink(fs.FileSink({output!r}), uid="counts"))
'''


class Count(fs.KeyedProcessFunction):
    """Emits (word, how many times it has been seen so far)."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.count = ctx.value_state("count", default=0)

    def process(self, word: str, ctx: fs.RuntimeContext):  # type: ignore[no-untyped-def]
        n = self.count.value() + 1
        self.count.update(n)
        yield (word, n)


def generate_text(directory: Path, lines: int, files: int = 4, seed: int = 2026) -> None:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "fu"]
    vocabulary = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(3000)})
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf-like: a few very hot keys
    directory.mkdir(parents=True, exist_ok=True)
    lengths = [rng.randint(3, 12) for _ in range(lines)]
    words = iter(rng.choices(vocabulary, weights, k=sum(lengths)))
    text = [" ".join(next(words) for _ in range(n)) for n in lengths]
    per_file = -(-lines // files)
    for f in range(files):
        (directory / f"part-{f}.txt").write_text("".join(t + "\n" for t in text[f * per_file : (f + 1) * per_file]))


def batch_reference(directory: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(directory.glob("*.txt")):
        with open(path) as f:
            for line in f:
                counts.update(line.split())
    return counts


def committed_output(directory: Path) -> list[tuple[str, int]]:
    records: list[tuple[str, int]] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue  # in-progress and pending files are hidden; only committed files count
        with open(path) as f:
            records.extend((w, n) for w, n in map(json.loads, f))
    return records


def _latest_completed(chk: Path) -> int:
    """The highest id of a checkpoint whose metadata exists (older ones are deleted as it lands)."""
    ids = [int(d.name.split("-")[1]) for d in chk.glob("chk-*") if (d / "_metadata").exists()] if chk.exists() else []
    return max(ids, default=0)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(root: Path, *, lines: int = 300_000, parallelism: int = 2, kill_after: int = 2) -> int:
    root = root.resolve()
    if root.exists():
        shutil.rmtree(root)
    data, output, chk = root / "input", root / "output", root / "checkpoints"
    _say(f"generating {lines:,} lines of text in {data}")
    generate_text(data, lines)
    job = root / "job.py"
    job.write_text(JOB.format(parallelism=parallelism, input=str(data / "*.txt"), output=str(output)))
    command = [sys.executable, "-m", "flowstate", "run", str(job), "--checkpoint-dir", str(chk),
               "--mode", "exactly_once", "--interval", "0.5s"]
    print("   job: FileSource -> flat_map(split) -> key_by(word) -> Count (keyed state) -> FileSink (2PC)")
    print("   $ " + " ".join(os.path.relpath(c) if c.startswith(str(root)) else c for c in command[1:]))

    _say(f"run 1: will be killed with SIGKILL after {kill_after} completed checkpoints")
    child = subprocess.Popen(command)
    killed = False
    while child.poll() is None:
        if _latest_completed(chk) >= kill_after:
            child.send_signal(signal.SIGKILL)
            child.wait()
            killed = True
            break
        time.sleep(0.02)
    if killed:
        print(f"   killed (SIGKILL) right after checkpoint {_latest_completed(chk)} completed, output half written")
    else:
        print(f"   the job finished (exit {child.returncode}) before {kill_after} checkpoints: use more --lines")
    visible = len(committed_output(output)) if output.exists() else 0
    print(f"   committed records visible so far: {visible:,}")

    _say("run 2: the same command resumes from the latest completed checkpoint")
    second = subprocess.run(command)
    if second.returncode != 0:
        print(f"\nFAILED: the resumed job exited with {second.returncode}")
        return 1

    _say("checking the committed output against a plain batch count of the same input")
    reference = batch_reference(data)
    expected = Counter((w, n) for w, c in reference.items() for n in range(1, c + 1))
    actual = Counter(committed_output(output))
    missing = sum((expected - actual).values())
    extra = sum((actual - expected).values())
    duplicates = sum(c - 1 for c in actual.values() if c > 1)
    print(f"   words in the input:       {sum(reference.values()):,} ({len(reference):,} distinct)")
    print(f"   committed output records: {sum(actual.values()):,}")
    print(f"   missing: {missing:,}   duplicated: {duplicates:,}   unexpected: {extra - duplicates:,}")
    if killed and missing == extra == 0:
        print("\nPASS: killed with SIGKILL mid-run, resumed from a checkpoint, and the output is exactly-once.")
        return 0
    print("\nFAILED: the output differs from the batch count" if (missing or extra) else
          "\nINCONCLUSIVE: the job was never killed")
    return 1
