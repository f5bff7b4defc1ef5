"""Every kind of value the checkpoint protocol returns has a case where the runtime executes it.

The protocol answers with union types (``HandlerAction``, ``CoordinatorAction``) and the runner feeds
it from a union of reports (``CheckpointReport``). Each consumer ``match``es on the union and ends with
``case _: assert_never(...)``. These tests read each consumer's cases and compare them with the
members of its union (``typing.get_args``), so that a kind added to a union without a case fails
here, with no type checker; and they prove that a value of no known kind raises instead of being
ignored.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, get_args

import pytest

from flowstate.checkpoint.coordinator import CoordinatorAction
from flowstate.checkpoint.handler import HandlerAction
from flowstate.checkpoint.unaligned import _named
from flowstate.runner.shell import CoordinatorShell
from flowstate.task.messages import CheckpointReport
from flowstate.task.task import StreamTask


@dataclass(frozen=True)
class Dispatch:
    """What one ``match`` statement of a function handles."""

    classes: frozenset[str]
    """The classes named by its class patterns (alternatives included)."""
    ends_with_assert_never: bool
    """Its last case is ``case _:`` calling ``assert_never``."""


def dispatch_of(function: Callable[..., Any], subject: str) -> Dispatch:
    """The ``match <subject>:`` statement of ``function`` (there must be exactly one)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    matches = [node for node in ast.walk(tree)
               if isinstance(node, ast.Match) and isinstance(node.subject, ast.Name) and node.subject.id == subject]
    assert len(matches) == 1, f"{function.__qualname__} has {len(matches)} `match {subject}` statements"
    [match] = matches
    classes: set[str] = set()
    for case in match.cases:
        classes |= _class_names(case.pattern)
    last = match.cases[-1]
    wildcard = isinstance(last.pattern, ast.MatchAs) and last.pattern.pattern is None and last.pattern.name is None
    calls = {node.func.id for node in ast.walk(last) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    return Dispatch(frozenset(classes), wildcard and "assert_never" in calls)


def _class_names(pattern: ast.pattern) -> set[str]:
    match pattern:
        case ast.MatchClass(cls=ast.Name(id=name)):
            return {name}
        case ast.MatchOr(patterns=patterns):
            return set().union(*(_class_names(p) for p in patterns))
        case ast.MatchAs(pattern=inner) if inner is not None:
            return _class_names(inner)
        case _:
            return set()


def members(union: Any) -> frozenset[str]:
    return frozenset(t.__name__ for t in get_args(union))


CONSUMERS = [
    pytest.param(StreamTask._execute, "action", HandlerAction, id="a task executes every handler action"),
    pytest.param(_named, "action", HandlerAction, id="the unaligned handler knows the checkpoint of every action"),
    pytest.param(CoordinatorShell.execute, "action", CoordinatorAction, id="the runner executes every coordinator action"),
    pytest.param(CoordinatorShell.report, "report", CheckpointReport, id="the runner turns every report into a fact"),
]


@pytest.mark.parametrize(("consumer", "subject", "union"), CONSUMERS)
def test_every_member_of_the_union_has_a_case_and_anything_else_is_never_ignored(
    consumer: Callable[..., Any], subject: str, union: Any,
) -> None:
    dispatch = dispatch_of(consumer, subject)

    assert dispatch.classes == members(union), (
        f"not handled: {sorted(members(union) - dispatch.classes)}; "
        f"not in the union: {sorted(dispatch.classes - members(union))}")
    assert dispatch.ends_with_assert_never


# ---- the check can fail --------------------------------------------------------------------------


@dataclass(frozen=True)
class Left:
    pass


@dataclass(frozen=True)
class Right:
    pass


@dataclass(frozen=True)
class Added:
    pass


Grown = Left | Right | Added


def handles_two(action: Grown) -> str:
    match action:
        case Left() | Right():
            return "handled"
        case _:
            return "ignored"


def test_the_check_finds_a_member_without_a_case_and_a_wildcard_that_ignores() -> None:
    dispatch = dispatch_of(handles_two, "action")

    assert members(Grown) - dispatch.classes == {"Added"}
    assert not dispatch.ends_with_assert_never


# ---- at run time -------------------------------------------------------------------------------


class Unknown:
    """A kind no consumer knows."""


def test_a_task_raises_on_a_handler_action_of_no_known_kind() -> None:
    task = SimpleNamespace()

    with pytest.raises(AssertionError):
        StreamTask._execute(task, [Unknown()], None)  # type: ignore[arg-type, list-item]


def test_the_runner_raises_on_a_coordinator_action_or_report_of_no_known_kind() -> None:
    shell = SimpleNamespace(ctx=SimpleNamespace(failpoints=None), coordinator=object())

    with pytest.raises(AssertionError):
        CoordinatorShell.execute(shell, [Unknown()])  # type: ignore[arg-type, list-item]
    with pytest.raises(AssertionError):
        CoordinatorShell.report(shell, Unknown(), 0.0)  # type: ignore[arg-type]
