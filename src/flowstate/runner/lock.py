"""The lock that keeps two runs from writing the same local checkpoint directory."""

from __future__ import annotations

import fcntl
from pathlib import Path

from flowstate.clock import Clock, SystemClock
from flowstate.errors import ConfigError


class CheckpointDirLock:
    """Keeps two runs from writing the same checkpoint directory.

    Worker processes hold the lock's descriptor (``fileno``, passed to each), so it is free only once
    every process of a run is gone. A run
    killed with SIGKILL takes its workers with it within milliseconds; a lock still held is therefore
    tried again for up to ``wait`` seconds before the directory counts as in use."""

    def __init__(self, directory: Path, clock: Clock | None = None, wait: float = 1.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / "_lock", "a+")  # noqa: SIM115 - held for the run
        clock = clock or SystemClock()
        give_up = clock.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if clock.monotonic() < give_up:
                    clock.sleep(0.02)
                    continue
                self._file.close()
                raise ConfigError(f"another flowstate run is using the checkpoint directory {directory}") from None

    def fileno(self) -> int:
        return self._file.fileno()

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
