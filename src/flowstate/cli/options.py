"""Command-line options made from dataclass fields: the one place where a field becomes a flag.

Rules:

1. Every field of every group handed to ``with_options`` is exactly one option of the command, and
   the command has no other option besides its own declared parameters. Its flag is the field's
   ``flag`` metadata or ``--`` and the field name with dashes; its help is the field's ``help``.
2. A ``bool`` field is a flag without a value: given, it sets the opposite of the command line's
   default (``--quiet`` turns progress off, ``--fresh`` turns a fresh start on). A command-line
   default of ``None`` is left to the command to decide (``--no-control``: control is served when
   the job takes checkpoints into a directory).
3. An ``int`` field takes an integer (a mistake is a usage error, exit 2); every other field takes
   text, read by the group itself, so durations, modes and restart strategies are read by the same
   code as in ``fs.run`` (a mistake is a ``ConfigError``, exit 2).
4. The options of a group are listed in ``--help`` under its keyword (that of ``fs.run``).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, fields
from enum import Enum
from typing import Annotated, Any

import typer

from flowstate.exits import Interrupted
from flowstate.observe.logs import FORMATS as LOG_FORMATS
from flowstate.observe.logs import LEVELS as LOG_LEVELS
from flowstate.options import Duration, option


@dataclass(frozen=True)
class RunCommandOptions:
    """Options of ``flowstate run`` that belong to the command, not to the job."""

    stop_timeout: Duration = option(
        "30s", help="on SIGTERM the job stops after a final checkpoint, as with flowstate stop; without that "
        "done within this time (or on a second SIGTERM) it stops at once")


@dataclass(frozen=True)
class LogOptions:
    """How every command logs (restore decisions, skipped checkpoints and restarts show at info)."""

    log_level: str = option("info", help=f"one of {', '.join(LOG_LEVELS)}")
    log_format: str = option("text", help=f"{' or '.join(LOG_FORMATS)} (json: one object a line)")

    def __post_init__(self) -> None:
        from flowstate.errors import ConfigError

        for name, choices in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}: "
                                  f"choose one of {', '.join(choices)}")


def flag(f: Field[Any]) -> str:
    """The option of field ``f`` (rule 1)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_default(f: Field[Any]) -> Any:
    """The value of field ``f`` when its option is not given."""
    value = f.metadata.get("cli_default", MISSING)
    if value is MISSING:
        value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc,operator]
    return value.value if isinstance(value, Enum) else value


def _is_bool(f: Field[Any]) -> bool:
    return isinstance(f.default, bool)


def _is_int(hint: Any) -> bool:
    return hint is int or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                           and set(typing.get_args(hint)) <= {int, type(None)})


def _parameter(group: type, f: Field[Any], hint: Any, panel: str) -> inspect.Parameter:
    default = cli_default(f)
    metavar = f.metadata.get("metavar") or _metavar(f, hint)
    if _is_bool(f):
        annotation: Any = Annotated[bool, typer.Option(flag(f), help=f.metadata["help"], rich_help_panel=panel,
                                                       show_default=False)]
        return inspect.Parameter(_name(group, f), inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
    kind: Any = int if _is_int(hint) else str
    if default is not None:
        default = kind(default)
    annotation = Annotated[kind | None if default is None else kind,
                           typer.Option(flag(f), help=f.metadata["help"], rich_help_panel=panel, metavar=metavar,
                                        show_default=default is not None)]
    return inspect.Parameter(_name(group, f), inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _metavar(f: Field[Any], hint: Any) -> str:
    if _is_int(hint):
        return "N"
    if "timedelta" in str(hint):
        return "DURATION"
    return f.name.upper()


def _name(group: type, f: Field[Any]) -> str:
    return f"{group.__name__}__{f.name}"


def _value(f: Field[Any], given: Any) -> Any:
    """The field's value from what the command line gave (rule 2 for flags)."""
    if not _is_bool(f):
        return given
    absent = cli_default(f)
    if not given:
        return absent
    return not (absent is None or absent)


def parameters(groups: Mapping[str, type]) -> list[inspect.Parameter]:
    """The command-line parameters of every field of ``groups`` (keyword → dataclass)."""
    result: list[inspect.Parameter] = []
    for keyword, group in groups.items():
        hints = typing.get_type_hints(group)
        result.extend(_parameter(group, f, hints[f.name], keyword) for f in fields(group))
    return result


def with_options(groups: Mapping[str, type]) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command ``f(*own, **groups)``: its signature gains one option per field of each
    group, and it is called with its own parameters and one instance of each group, built from the
    options given (rules 1-3; a group that refuses a value raises ``ConfigError``)."""

    def decorate(command: Callable[..., int]) -> Callable[..., int]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name not in groups]
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]

        @functools.wraps(command)
        def wrapper(**given: Any) -> int:
            built = {keyword: group(**{f.name: _value(f, given.pop(_name(group, f))) for f in fields(group)})
                     for keyword, group in groups.items()}
            try:
                return command(**given, **built)
            except KeyboardInterrupt as interrupt:
                raise Interrupted() from interrupt

        extra = parameters(groups)
        wrapper.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *extra]}
        del wrapper.__wrapped__  # typer reads the signature above, not the command's
        return wrapper

    return decorate
