"""Checkpoint storage served by a fresh interpreter of its own: what a forked worker uses for object
storage.

An object-store client (``obstore``) runs its requests on a runtime of I/O threads that is created
once per process. A process forked from one that had created it inherits the runtime without its
threads, and every request of the child then waits forever. A forked worker therefore never makes
object-store requests itself: ``IsolatedStorage`` starts ``python -m flowstate.storage.isolated``
(a new interpreter, not a fork), which opens the storage from its location and answers one call at
a time over its standard input and output.

Rules:

1. Every method of the ``CheckpointStorage`` port is forwarded as it is (arguments and results are
   pickled; ``restore_candidates`` is answered as a list). An exception raised by the storage is
   raised again in the caller. Calls are serialized: one at a time per ``IsolatedStorage``.
2. The server dies with the process that started it: on Linux it asks the kernel for SIGKILL when
   that process exits (so no late write of a killed worker lands in storage), and everywhere it
   ends when its standard input closes.
3. Both ends share the machine: ``local_path`` answers a path of the server's cache that the caller
   reads, and ``write_shared`` may name a local file.
4. Failpoints of the storage (``storage.*``) travel to the server pickled: it counts its own hits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from flowstate.checkpoint.ids import CheckpointId
from flowstate.checkpoint.restore import Invalid, Valid
from flowstate.storage.base import CheckpointInfo, CheckpointMetadata, StateHandle

_LENGTH = struct.Struct(">Q")


def _send(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the storage server closed its end")
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the storage server closed its end")
    return pickle.loads(data)


class IsolatedStorage:
    """The ``CheckpointStorage`` at ``location`` (see the module rules)."""

    def __init__(self, location: str, failpoints: Any = None) -> None:
        self.location = location
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flowstate.storage.isolated", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        self._lock = threading.Lock()
        self._call("__open__", location, failpoints)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            try:
                _send(stdin, (method, args, kwargs))
                ok, value = _receive(stdout)
            except (OSError, EOFError, ValueError) as exc:  # ValueError: its pipe was closed here
                raise OSError(f"the storage server of {self.location} is gone: {exc}") from exc
        if not ok:
            raise value
        return value

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    # ---- the CheckpointStorage port -------------------------------------------------------------

    def write_state(self, checkpoint_id: CheckpointId, name: str, data: bytes, *, codec: str = "none") -> StateHandle:
        return self._call("write_state", checkpoint_id, name, data, codec=codec)  # type: ignore[no-any-return]

    def write_shared(self, key: str, source: bytes | os.PathLike[str]) -> StateHandle:
        if not isinstance(source, bytes):
            source = Path(source).resolve()
        return self._call("write_shared", key, source)  # type: ignore[no-any-return]

    def write_shared_many(self, items: Iterable[tuple[str, bytes | os.PathLike[str]]]) -> list[StateHandle]:
        listed = [(k, s if isinstance(s, bytes) else Path(s).resolve()) for k, s in items]
        return self._call("write_shared_many", listed)  # type: ignore[no-any-return]

    def read_state(self, handle: StateHandle) -> bytes:
        return self._call("read_state", handle)  # type: ignore[no-any-return]

    def local_path(self, handle: StateHandle) -> Path:
        return self._call("local_path", handle)  # type: ignore[no-any-return]

    def write_metadata(self, metadata: CheckpointMetadata) -> None:
        self._call("write_metadata", metadata)

    def restore_candidates(self) -> Iterator[Valid[CheckpointMetadata] | Invalid]:
        return iter(self._call("restore_candidates"))

    def list_checkpoints(self) -> list[CheckpointInfo]:
        return self._call("list_checkpoints")  # type: ignore[no-any-return]

    def highest_id(self) -> int:
        return self._call("highest_id")  # type: ignore[no-any-return]

    def discard(self, checkpoint_id: CheckpointId) -> None:
        self._call("discard", checkpoint_id)

    def sweep(self, keep: set[CheckpointId]) -> list[CheckpointId]:
        return self._call("sweep", keep)  # type: ignore[no-any-return]

    def sweep_orphans(self, grace_seconds: float, now: float) -> list[str]:
        return self._call("sweep_orphans", grace_seconds, now)  # type: ignore[no-any-return]


def _die_with(parent: int) -> None:
    """Rule 2 (Linux): SIGKILL this process when the process that started it exits."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    from flowstate.storage.factory import open_storage

    storage: Any = None
    while True:
        try:
            method, args, kwargs = _receive(stdin)
        except EOFError:
            return
        try:
            if method == "__open__":
                location, failpoints = args
                storage = open_storage(location, **({"failpoints": failpoints} if failpoints else {}))
                value: Any = None
            elif method == "restore_candidates":
                value = list(storage.restore_candidates())
            else:
                value = getattr(storage, method)(*args, **kwargs)
            answer = (True, value)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            answer = (False, exc)
        try:
            _send(stdout, answer)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle goes back as text
            _send(stdout, (False, OSError(f"{type(exc).__name__}: {exc}")))


if __name__ == "__main__":
    _die_with(int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the worker decides
    _serve(sys.stdin.buffer, sys.stdout.buffer)
