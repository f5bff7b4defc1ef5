"""Named failpoints: places in the engine where a test can inject a failure.

A ``Failpoints`` object is built per job run (from the API or from the ``FLOWSTATE_FAILPOINTS``
environment variable) and handed to the parts of the runtime; nothing here is global. When no
failpoint is set the object is falsy and the engine skips the call entirely (``if fp: fp.hit(...)``).

Syntax of the environment variable: ``name=action[@N | %P][;name=action…]`` where action is
``raise``, ``kill`` (SIGKILL of the own process) or ``stall(SECONDS)``; ``@N`` fires on the Nth hit
only, ``%P`` with probability P on every hit (seeded by ``FLOWSTATE_FAILPOINTS_SEED``), neither fires
on every hit. With ``FLOWSTATE_FAILPOINTS_KILL=session`` in the environment, ``kill`` first sends
SIGKILL to the process group of the session's leader: a job started in a session of its own loses
its coordinator, and with it (parent-death signal) every worker process, as in the crash of their
machine. The chaos runner uses it for jobs on worker processes.

A job whose tasks run in worker processes counts hits across all of them: before starting them, the
executor calls ``share()``, which moves the counts into a small memory-mapped file (unlinked at once,
freed with its last descriptor) and returns a ``SharedCounts`` value naming its descriptor; each worker
receives that descriptor (``pass_fds``) and the value with its start, and ``attach``es the plan's
failpoints to it, so ``@N`` still fires once, on the job's N-th hit. A ``Failpoints`` pickled without
that (a Ray actor) counts its own hits. Draws of ``%P`` stay per process.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KILL_ENV = "FLOWSTATE_FAILPOINTS_KILL"
"""``session``: a ``kill`` action kills the session leader's process group (see the module docstring)."""

# The names the engine hits, in the order a checkpoint meets them.
SOURCE_BEFORE_SNAPSHOT = "source.before_snapshot"
"""A source received a checkpoint trigger and has not snapshotted its offsets yet."""
SOURCE_AFTER_SNAPSHOT = "source.after_snapshot"
"""A source has snapshotted its offsets and not yet emitted the barrier."""
BARRIER_FIRST = "barrier.first_received"
"""A task with inputs received the first barrier of a checkpoint."""
ALIGNMENT_BLOCKED = "alignment.channel_blocked"
"""A task blocked an input channel at a barrier (k of n barriers received) and waits for the others."""
TASK_BEFORE_SNAPSHOT = "task.before_snapshot"
"""Every barrier arrived (aligned); the task has not taken its synchronous snapshot yet."""
TASK_BEFORE_FORWARD = "task.snapshot_before_forward"
"""The synchronous snapshot is taken; the barrier is not forwarded downstream yet."""
FINAL_CHECKPOINT = "task.final_snapshot"
"""Every input ended; the task is taking its part of the final checkpoint."""
SINK_MID_PRE_COMMIT = "sink.mid_pre_commit"
"""A sink made its in-progress output durable and has not renamed it to its pending name."""
SINK_AFTER_PRE_COMMIT = "sink.pre_committed_before_ack"
"""A sink pre-committed its output for a checkpoint; the task has not acknowledged yet."""
STORAGE_STATE_MID_WRITE = "storage.state_mid_write"
"""Part of a state file is written to its temporary name (the asynchronous part of a snapshot)."""
STORAGE_SHARED_MID_UPLOAD = "storage.shared_mid_upload"
"""Part of a shared file (a RocksDB SST of an incremental checkpoint) is uploaded, not all of it."""
TASK_AFTER_SNAPSHOT = "task.after_snapshot_before_ack"
"""The task's state files are durable; it has not acknowledged yet."""
COORDINATOR_SOME_ACKS = "coordinator.some_acks"
"""The coordinator holds some acknowledgements of a checkpoint, not all."""
COORDINATOR_BEFORE_METADATA = "coordinator.all_acks_before_metadata"
"""Every task acknowledged; the metadata is not written yet."""
STORAGE_METADATA_TORN = "storage.metadata_torn"
"""Half of the metadata is written to its temporary name (a torn write)."""
STORAGE_METADATA_BEFORE_RENAME = "storage.metadata_before_rename"
"""The metadata is written and fsynced under its temporary name, not renamed yet."""
COORDINATOR_AFTER_METADATA = "coordinator.metadata_before_notify"
"""The checkpoint is complete on disk; tasks are not notified yet."""
SINK_BEFORE_COMMIT = "sink.before_commit"
"""A sink was notified of completion and has not committed."""
SINK_MID_COMMIT = "sink.mid_commit"
"""A sink made part of a checkpoint's output visible, not all of it durably."""
SINK_AFTER_COMMIT = "sink.after_commit"
"""A sink committed a checkpoint's files."""
RECOVERY_CHECKPOINT_CHOSEN = "recovery.checkpoint_chosen"
"""A restart chose the checkpoint to restore from and has loaded nothing yet."""
RECOVERY_MID_LOAD = "recovery.mid_state_load"
"""A restart loaded the state of some tasks, not all."""
RECOVERY_STATE_LOADED = "recovery.state_loaded"
"""A restored task loaded its state and has not processed a record yet (before any new checkpoint)."""
OPERATOR_PROCESS = "operator.process"
"""A task is about to feed a batch through its chain of operators."""

KNOWN = frozenset({
    SOURCE_BEFORE_SNAPSHOT, SOURCE_AFTER_SNAPSHOT, BARRIER_FIRST, ALIGNMENT_BLOCKED, TASK_BEFORE_SNAPSHOT,
    TASK_BEFORE_FORWARD, FINAL_CHECKPOINT, SINK_MID_PRE_COMMIT, SINK_AFTER_PRE_COMMIT, STORAGE_STATE_MID_WRITE,
    STORAGE_SHARED_MID_UPLOAD,
    TASK_AFTER_SNAPSHOT, COORDINATOR_SOME_ACKS, COORDINATOR_BEFORE_METADATA, STORAGE_METADATA_TORN,
    STORAGE_METADATA_BEFORE_RENAME, COORDINATOR_AFTER_METADATA, SINK_BEFORE_COMMIT, SINK_MID_COMMIT,
    SINK_AFTER_COMMIT, RECOVERY_CHECKPOINT_CHOSEN, RECOVERY_MID_LOAD, RECOVERY_STATE_LOADED, OPERATOR_PROCESS,
})
"""Every failpoint, in the order a checkpoint and a recovery meet them."""


class InjectedFailure(Exception):
    """Raised by a failpoint whose action is ``raise``."""


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "raise" | "kill" | "stall"
    nth: int | None = None
    probability: float | None = None
    stall_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("raise", "kill", "stall"):
            raise ValueError(f"unknown failpoint action {self.kind!r}: use raise, kill or stall(SECONDS)")
        if self.nth is not None and self.nth < 1:
            raise ValueError("@N counts hits from 1")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("%P is a probability between 0 and 1")


_SPEC = re.compile(r"^(?P<name>[\w.]+)=(?P<kind>raise|kill|stall)(\((?P<secs>[\d.]+)\))?(@(?P<nth>\d+)|%(?P<p>[\d.]+))?$")


def parse(spec: str) -> dict[str, Action]:
    actions: dict[str, Action] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        m = _SPEC.match(part)
        if m is None:
            raise ValueError(f"cannot parse failpoint {part!r}: expected name=raise|kill|stall(S)[@N|%P]")
        name = m["name"]
        if name not in KNOWN:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(KNOWN))}")
        actions[name] = Action(
            m["kind"],
            nth=int(m["nth"]) if m["nth"] else None,
            probability=float(m["p"]) if m["p"] else None,
            stall_seconds=float(m["secs"] or 0.0),
        )
    return actions


@dataclass(frozen=True, slots=True)
class SharedCounts:
    """Where the hit and fired counts of a job's failpoints live for every process of the job: an
    open descriptor of an unlinked file (the same number in a worker started with it in
    ``pass_fds``), holding two 64-bit counts per name, in the order of ``names``."""

    fd: int
    names: tuple[str, ...]


class _SharedLock:
    """Mutual exclusion across threads (a lock) and processes (a POSIX record lock on the counts'
    file, held per process: every process reaches the file through one descriptor only)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        self._threads.acquire()
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        self._threads.release()


class Failpoints:
    """The failpoints of one job run: an action per name, and how often each name was hit and fired."""

    def __init__(self, actions: Mapping[str, Action | str] | None = None, *, seed: int | None = None) -> None:
        parsed: dict[str, Action] = {}
        for name, action in (actions or {}).items():
            if name not in KNOWN:
                raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(sorted(KNOWN))}")
            parsed[name] = action if isinstance(action, Action) else parse(f"{name}={action}")[name]
        self._actions = parsed
        self._seed = seed
        self._hits: dict[str, int] = {}
        self._fired: dict[str, int] = {}
        self._lock: Any = threading.Lock()
        self._rng = random.Random(seed)
        self._shared: Any = None
        """After ``share()`` or ``attach()``: hits then fired count of each name of ``_names``, in
        shared memory."""
        self._names: dict[str, int] = {}
        self._counts: SharedCounts | None = None
        self._keep: Any = None
        """The file and mapping behind ``_shared`` (kept open as long as this object lives)."""

    def __reduce__(self) -> tuple[object, ...]:
        # Only the actions travel; the counts start at zero in the receiving process unless it is
        # handed the ``SharedCounts`` (``attach``).
        return (Failpoints, (dict(self._actions),), {"_seed": self._seed, "_rng": random.Random(self._seed)})

    def share(self) -> SharedCounts | None:
        """Move the counts into shared memory and say where it is, for worker processes to
        ``attach`` (idempotent; ``None`` when no failpoint is set)."""
        if not self._actions:
            return None
        if self._counts is None:
            names = tuple(sorted(self._actions))
            file = tempfile.TemporaryFile()  # noqa: SIM115 - kept open as long as this object lives
            os.ftruncate(file.fileno(), 16 * len(names))
            for k, name in enumerate(names):
                os.pwrite(file.fileno(), int(self._hits.get(name, 0)).to_bytes(8, sys.byteorder, signed=True)
                          + int(self._fired.get(name, 0)).to_bytes(8, sys.byteorder, signed=True), 16 * k)
            self._map(SharedCounts(file.fileno(), names), file)
        return self._counts

    def attach(self, counts: SharedCounts) -> None:
        """Count in the shared memory ``counts`` (made by ``share()`` in the coordinator's process,
        its descriptor passed to this one)."""
        if set(counts.names) != set(self._actions):
            raise ValueError(f"shared failpoint counts for {counts.names} do not match {sorted(self._actions)}")
        self._map(counts, None)

    def _map(self, counts: SharedCounts, file: Any) -> None:
        mapping = mmap.mmap(counts.fd, 16 * len(counts.names))
        self._shared = memoryview(mapping).cast("q")
        self._names = {name: k for k, name in enumerate(counts.names)}
        self._lock = _SharedLock(counts.fd)
        self._counts = counts
        self._keep = (file, mapping)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Failpoints:
        """The failpoints of ``FLOWSTATE_FAILPOINTS`` (and its seed) in ``environ``."""
        spec = environ.get("FLOWSTATE_FAILPOINTS", "")
        seed = environ.get("FLOWSTATE_FAILPOINTS_SEED")
        return cls(parse(spec), seed=int(seed) if seed else None)

    def __bool__(self) -> bool:
        return bool(self._actions)

    def hits(self, name: str) -> int:
        """How often failpoint ``name`` was reached (across worker processes once shared)."""
        if self._shared is not None and name in self._names:
            return int(self._shared[2 * self._names[name]])
        return self._hits.get(name, 0)

    def fired(self, name: str) -> int:
        """How often failpoint ``name`` performed its action."""
        if self._shared is not None and name in self._names:
            return int(self._shared[2 * self._names[name] + 1])
        return self._fired.get(name, 0)

    def hit(self, name: str) -> None:
        """Reach failpoint ``name``: count it, and perform its action when it is due."""
        action = self._actions.get(name)
        if action is None:
            return
        with self._lock:
            shared = self._shared
            if shared is not None:
                k = 2 * self._names[name]
                n = shared[k] = shared[k] + 1
            else:
                n = self._hits[name] = self._hits.get(name, 0) + 1
            if action.nth is not None:
                fire = n == action.nth
            elif action.probability is not None:
                fire = self._rng.random() < action.probability
            else:
                fire = True
            if fire:
                if shared is not None:
                    shared[k + 1] += 1
                else:
                    self._fired[name] = self._fired.get(name, 0) + 1
        if not fire:
            return
        if action.kind == "raise":
            raise InjectedFailure(f"failpoint {name} (hit {n})")
        if action.kind == "kill":
            if os.environ.get(KILL_ENV) == "session":
                os.killpg(os.getsid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(action.stall_seconds)
