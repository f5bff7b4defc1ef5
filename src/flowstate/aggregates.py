"""Incremental aggregates for windows: ``create() -> acc``, ``add(acc, record) -> acc``,
``merge(a, b) -> acc``, ``result(acc) -> value``. Only the accumulator is stored in state.

Any object with these four methods is an aggregate. ``merge`` must be associative: the window
operator adds the records of a batch into a fresh accumulator and merges it into the stored one, and
session windows merge the accumulators of the windows they join.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T_contra = TypeVar("T_contra", contravariant=True)
A = TypeVar("A")
R_co = TypeVar("R_co", covariant=True)


class Aggregate(Protocol[T_contra, A, R_co]):
    """An incremental aggregate over records ``T``, with accumulator ``A`` and result ``R``."""

    def create(self) -> A:
        """A new, empty accumulator."""
        ...

    def add(self, acc: A, record: T_contra, /) -> A:
        """``acc`` with ``record`` added (it may be ``acc`` changed in place)."""
        ...

    def merge(self, a: A, b: A, /) -> A:
        """One accumulator holding both (associative)."""
        ...

    def result(self, acc: A, /) -> R_co:
        """The value a window emits."""
        ...


def _identity(x: Any) -> Any:
    return x


@dataclass(frozen=True, slots=True)
class Count:
    """The number of records (``count()``)."""

    def create(self) -> int:
        return 0

    def add(self, acc: int, record: Any) -> int:
        return acc + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, acc: int) -> int:
        return acc


@dataclass(frozen=True, slots=True)
class Sum:
    """The sum of ``fn(record)`` (``sum(fn)``)."""

    fn: Callable[[Any], Any] = _identity

    def create(self) -> Any:
        return 0

    def add(self, acc: Any, record: Any) -> Any:
        return acc + self.fn(record)

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def result(self, acc: Any) -> Any:
        return acc


@dataclass(frozen=True, slots=True)
class Mean:
    """The mean of ``fn(record)``, NaN for no records (``mean(fn)``)."""

    fn: Callable[[Any], Any] = _identity

    def create(self) -> tuple[Any, int]:
        return (0, 0)

    def add(self, acc: tuple[Any, int], record: Any) -> tuple[Any, int]:
        return (acc[0] + self.fn(record), acc[1] + 1)

    def merge(self, a: tuple[Any, int], b: tuple[Any, int]) -> tuple[Any, int]:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, acc: tuple[Any, int]) -> float:
        return acc[0] / acc[1] if acc[1] else float("nan")


@dataclass(frozen=True, slots=True)
class _Extreme:
    fn: Callable[[Any], Any]
    largest: bool

    def create(self) -> Any:
        return None

    def add(self, acc: Any, record: Any) -> Any:
        return self.merge(acc, self.fn(record))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return (b if b > a else a) if self.largest else (b if b < a else a)

    def result(self, acc: Any) -> Any:
        return acc


def count() -> Count:
    """The number of records."""
    return Count()


def sum(fn: Callable[[Any], Any] = _identity) -> Sum:  # noqa: A001 - the user-facing name
    """The sum of ``fn(record)``."""
    return Sum(fn)


def mean(fn: Callable[[Any], Any] = _identity) -> Mean:
    """The mean of ``fn(record)``."""
    return Mean(fn)


def min(fn: Callable[[Any], Any] = _identity) -> _Extreme:  # noqa: A001
    """The smallest ``fn(record)``."""
    return _Extreme(fn, False)


def max(fn: Callable[[Any], Any] = _identity) -> _Extreme:  # noqa: A001
    """The largest ``fn(record)``."""
    return _Extreme(fn, True)


def check_aggregate(agg: object) -> None:
    """Raise ``TypeError`` naming what ``agg`` lacks to be an ``Aggregate``."""
    missing = [m for m in ("create", "add", "merge", "result") if not callable(getattr(agg, m, None))]
    if missing:
        raise TypeError(f"{agg!r} is not an aggregate: it has no {', '.join(missing)}")
