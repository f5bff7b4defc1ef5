"""Errors users see. Each message names what went wrong and where."""

from __future__ import annotations


class FlowstateError(Exception):
    """Base of flowstate's user-facing errors."""


class GraphError(FlowstateError):
    """The dataflow cannot be built as written; the message names the operator."""


class ConfigError(FlowstateError):
    """A setting is invalid; the message names it and the accepted values."""


class UserFunctionError(FlowstateError):
    """A user function raised while processing a record."""

    def __init__(self, operator: str, record: object, cause: BaseException) -> None:
        self.operator = operator
        self.record = record
        self.cause = cause
        shown = repr(record)
        if len(shown) > 200:
            shown = shown[:200] + "…"
        super().__init__(f"operator {operator!r} failed on record {shown}: {type(cause).__name__}: {cause}")

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled when a task in a worker process fails (its report crosses to the coordinator).
        return (type(self), (self.operator, self.record, self.cause))


class UnwritableRecordError(FlowstateError, ValueError):
    """A sink cannot write ``record`` (its encoder raised, or gave no single line); the sink's
    operator reports it as a ``UserFunctionError`` naming the sink and the record."""

    def __init__(self, record: object, cause: BaseException) -> None:
        self.record = record
        self.cause = cause
        super().__init__(f"cannot encode the record: {type(cause).__name__}: {cause}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.record, self.cause))


class JobFailedError(FlowstateError):
    """The job failed and its restart strategy gave up."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
