"""At-least-once sinks that hand records over at once: to a text stream, to a function, or nowhere.

They are not transactional: a record is visible as soon as it is written, so after a restore the
records written since the restored checkpoint are written again. ``pre_commit``, ``commit``,
``finish`` and ``close`` do nothing and ``snapshot`` returns ``None``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO


class _AtLeastOnceWriter:
    """The two-phase-commit calls of a writer whose output is visible at once: nothing to do."""

    __slots__ = ()

    def pre_commit(self, checkpoint_id: int) -> None:
        pass

    def snapshot(self) -> None:
        return None

    def commit(self, checkpoint_id: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class _AtLeastOnceSink:
    """A sink's name, and that it is not transactional."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def transactional(self) -> bool:
        return False


class PrintSink(_AtLeastOnceSink):
    """One line per record, ``str(record)``, written to ``stream`` (default: ``sys.stdout`` as it is
    when the records are written). Each batch is one write call followed by a flush."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TextIO | None = None, *, name: str = "print") -> None:
        super().__init__(name)
        self._stream = stream

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> PrintWriter:
        return PrintWriter(self._stream)


class PrintWriter(_AtLeastOnceWriter):
    __slots__ = ("_stream",)

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def write_batch(self, records: list[Any]) -> None:
        if not records:
            return
        stream = sys.stdout if self._stream is None else self._stream
        stream.write("\n".join(map(str, records)) + "\n")
        stream.flush()


class DiscardSink(_AtLeastOnceSink):
    """Drops every record, as Flink's ``DiscardingSink``: for jobs whose output is not wanted (a
    benchmark, a job run for its state or metrics). Unlike a callback it works in worker processes."""

    __slots__ = ()

    def __init__(self, *, name: str = "discard") -> None:
        super().__init__(name)

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> DiscardWriter:
        return DiscardWriter()


class DiscardWriter(_AtLeastOnceWriter):
    __slots__ = ()

    def write_batch(self, records: list[Any]) -> None:
        pass


class _FunctionSink(_AtLeastOnceSink):
    """A sink that hands records to a function; at-least-once."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[..., object], name: str) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: fn must be callable, got {fn!r}")
        super().__init__(name)
        self._fn = fn


class CallbackSink(_FunctionSink):
    """Calls ``fn(record)`` for every record, in order."""

    __slots__ = ()

    def __init__(self, fn: Callable[[Any], object], *, name: str = "callback") -> None:
        super().__init__(fn, name)

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> CallbackWriter:
        return CallbackWriter(self._fn)


class CallbackWriter(_AtLeastOnceWriter):
    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[Any], object]) -> None:
        self._fn = fn

    def write_batch(self, records: list[Any]) -> None:
        fn = self._fn
        for record in records:
            fn(record)


class BatchCallbackSink(_FunctionSink):
    """Calls ``fn(records)`` once per non-empty batch, with a new list that ``fn`` may keep."""

    __slots__ = ()

    def __init__(self, fn: Callable[[list[Any]], object], *, name: str = "batch-callback") -> None:
        super().__init__(fn, name)

    def build_writer(self, subtask: int, parallelism: int, resume_state: Any | None) -> BatchCallbackWriter:
        return BatchCallbackWriter(self._fn)


class BatchCallbackWriter(_AtLeastOnceWriter):
    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[list[Any]], object]) -> None:
        self._fn = fn

    def write_batch(self, records: list[Any]) -> None:
        if records:
            self._fn(list(records))
