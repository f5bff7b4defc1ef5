"""The attempt plan: one frozen, picklable value from which every executor builds its tasks.

It names the restore point and, for each task, the state files it reads (references into storage,
never loaded bytes); a process that builds tasks from it opens its own storage and loads its own
tasks' state. These tests check which files each task reads, that a plan pickles, and that a fresh
interpreter (not a fork of this process) builds tasks restored from it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import flowstate as fs
from flowstate.checkpoint.ids import CheckpointId, task_id
from flowstate.checkpoint.restore import Chosen, choose
from flowstate.config import JobConfig, Mode
from flowstate.graph import build_job_graph
from flowstate.storage.base import CheckpointMetadata, StateHandle, TaskState
from flowstate.storage.local import LocalCheckpointStorage
from flowstate.storage.state_file import decode_task_state
from flowstate.task.assignment import describe_graph
from flowstate.task.plan import BackendSpec, RestorePoint, StorageSpec, plan_attempt, plan_reads

from .jobs import Count, generator_source

TESTS = Path(__file__).resolve().parent.parent
LINES = 400


def by_word(word: str) -> str:
    return word


def picklable_wordcount(output: Path, parallelism: int = 2) -> fs.Dataflow:
    """The engine tests' word count, built from module-level functions only (plain pickle takes it)."""
    flow = fs.Dataflow("wordcount", parallelism=parallelism)
    (flow.source(generator_source(LINES), uid="lines")
         .flat_map(str.split, uid="words")
         .key_by(by_word)
         .process(Count(), uid="count")
         .sink(fs.FileSink(output), uid="counts"))
    return flow


def metadata(parallelism: dict[str, int], graph_of: fs.Dataflow) -> CheckpointMetadata:
    graph = build_job_graph(graph_of)
    tasks = tuple(TaskState(task_id(v, i), v, i, StateHandle(f"chk-000001/{v}#{i}.state", 1, "0" * 64))
                  for v, p in parallelism.items() for i in range(p))
    return CheckpointMetadata(CheckpointId(1), "wordcount", "exactly_once", False, 0.0, 0.0, 128, parallelism,
                              tasks, describe_graph(graph))


def read(reads, task: str) -> list[str]:
    return sorted(ts.task for ts in reads[task])


def test_at_an_unchanged_layout_a_keyed_task_reads_its_own_file_and_a_source_task_every_file_of_its_source():
    flow = picklable_wordcount(Path("out"))
    reads = plan_reads(build_job_graph(flow), metadata({"lines": 2, "count": 2}, flow))

    assert read(reads, "count#0") == ["count#0"]
    assert read(reads, "count#1") == ["count#1"]
    # Source positions are merged split by split: a split may have moved to another subtask.
    assert read(reads, "lines#0") == read(reads, "lines#1") == ["lines#0", "lines#1"]


def test_after_a_rescale_a_task_reads_every_file_of_the_vertices_that_held_its_operators_state():
    old = picklable_wordcount(Path("out"), parallelism=2)
    reads = plan_reads(build_job_graph(picklable_wordcount(Path("out"), parallelism=3)),
                       metadata({"lines": 2, "count": 2}, old))

    for i in range(3):
        assert read(reads, f"count#{i}") == ["count#0", "count#1"]
        assert read(reads, f"lines#{i}") == ["lines#0", "lines#1"]


def test_a_file_no_task_would_read_is_read_by_the_first_task_so_that_its_state_is_refused_or_dropped():
    flow = picklable_wordcount(Path("out"))
    md = metadata({"lines": 2, "count": 2}, flow)
    gone = TaskState(task_id("tally", 0), "tally", 0, StateHandle("chk-000001/tally#0.state", 1, "0" * 64))
    md = CheckpointMetadata(md.checkpoint_id, md.job, md.mode, md.final, 0.0, 0.0, 128,
                            {**md.parallelism, "tally": 1}, (*md.tasks, gone), md.graph)

    reads = plan_reads(build_job_graph(flow), md)

    assert "tally#0" in read(reads, "lines#0")
    assert all("tally#0" not in read(reads, t) for t in ("lines#1", "count#0", "count#1"))


def completed_checkpoint(tmp_path: Path) -> tuple[fs.Dataflow, CheckpointMetadata]:
    flow = picklable_wordcount(tmp_path / "out")
    fs.run(
        flow,
        checkpoints=fs.CheckpointOptions(checkpoint_dir=tmp_path / "chk", interval="20ms"),
        execution=fs.ExecutionOptions(executor="threads"),
    )
    decision = choose(LocalCheckpointStorage(tmp_path / "chk").restore_candidates())
    assert isinstance(decision, Chosen)
    return flow, decision.metadata


def test_a_plan_pickles_and_a_fresh_interpreter_builds_its_tasks_restored_from_it(tmp_path):
    flow, md = completed_checkpoint(tmp_path)
    graph = build_job_graph(flow)
    config = JobConfig(mode=Mode.EXACTLY_ONCE, checkpoint_dir=tmp_path / "chk")
    restore = RestorePoint(md, StorageSpec.of(tmp_path / "chk"), f"checkpoint {md.checkpoint_id}")
    plan = plan_attempt(graph, config, failpoints=fs.Failpoints(), restore=restore, backend=BackendSpec())

    data = pickle.dumps(plan)
    copy = pickle.loads(data)
    assert (copy.config, copy.checkpoints, copy.backend, copy.restore, copy.reads) == (
        plan.config, plan.checkpoints, plan.backend, plan.restore, plan.reads)
    assert all(isinstance(ts, TaskState) for files in plan.reads.values() for ts in files)
    assert len(data) < 20_000, "the plan carries references to state files, never their bytes"
    (tmp_path / "plan.pickle").write_bytes(data)

    # A new interpreter: nothing of this process reaches it but the pickled plan.
    script = (
        "import json, pickle, queue, sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from flowstate.task.factory import TaskSite, build_tasks\n"
        "plan = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "with ThreadPoolExecutor(1) as pool:\n"
        "    tasks = build_tasks(plan, queue.Queue(), pool, TaskSite.open(plan))\n"
        "print(json.dumps({tid: {'source': t.resume.source, 'state': sorted(t.resume.operators)}\n"
        "                  for tid, t in tasks.items()}))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "plan.pickle")], capture_output=True,
                         text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout)

    storage = LocalCheckpointStorage(tmp_path / "chk")
    stored = {ts.task: decode_task_state(storage.read_state(ts.handle)) for ts in md.tasks if ts.handle is not None}
    assert sorted(built) == ["count#0", "count#1", "lines#0", "lines#1"]
    for source in ("lines#0", "lines#1"):
        assert built[source]["source"] == stored[source].source, "the source resumes where the checkpoint is"
        assert sum(built[source]["source"].values()) > 0
    positions = {split: p for s in ("lines#0", "lines#1") for split, p in built[s]["source"].items()}
    assert len(positions) == 4 and all(p >= LINES for p in positions.values()), (
        f"the final checkpoint holds the end of every split: {positions}")
    for keyed in ("count#0", "count#1"):
        assert "count" in built[keyed]["state"], "the keyed task gets its keyed state back"
