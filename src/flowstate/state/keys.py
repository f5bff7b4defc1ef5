"""The rules of keys: what a key may be, and which keys are the same key.

These rules hold on every state backend, executor and parallelism, so that a job's output never
depends on where it runs. Every place that looks at a key follows them: the key-group hash
(``flowstate.state.keygroups``), the byte encoding of RocksDB (``flowstate.state.codec``), the keyed
operators (which check a key before it reaches the heap backend's dicts) and map state (whose map
keys follow the same rules).

1. **A key is** ``None``, a ``bool``, an ``int``, a ``float`` other than NaN, a ``str``, ``bytes``,
   a ``datetime.date`` (not a ``datetime``), or a tuple of keys. Subclasses of ``str``, ``int``,
   ``float``, ``bytes`` and ``tuple`` (``StrEnum``, ``IntEnum``, named tuples) are keys and count
   as their plain value. Anything else raises ``UnsupportedKeyError`` naming the key: no key type is
   accepted on one backend or parallelism and refused on another.
2. **Keys are the same key when Python says they are equal** (``==``): ``1``, ``1.0`` and ``True``
   are one key, so are ``0``, ``0.0``, ``-0.0`` and ``False``, and ``("a", 1)`` and ``("a", 1.0)``.
   That is what a ``dict`` does, so the heap backend needs nothing more; the hash and the RocksDB
   encoding normalise every number that equals an ``int`` to that ``int`` so that they agree.
   ``"a"`` and ``b"a"`` are different keys (Python: ``"a" != b"a"``); they may share a key group.
3. NaN is refused because it is not equal to itself: its state could never be read back.
4. A key selector that can only return its argument (``lambda record: record``, the key of a stream
   of words) is not called: the record is its key (``returns_its_argument``). Only the code is
   looked at, so the rules above apply to the record as they would to what the selector returned.
"""

from __future__ import annotations

import datetime
import inspect
from types import FunctionType

_DATE = datetime.date
_SCALARS = frozenset({str, int, bytes, bool, type(None)})
_BASES = (str, int, float, bytes, tuple)
_IDENTITY = (lambda record: record).__code__
_NOT_PLAIN = (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_COROUTINE
              | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE)


class UnsupportedKeyError(TypeError):
    """A key (or map key) that breaks rule 1 or 3; the message names the key and what is allowed."""

    def __init__(self, key: object, reason: str = "") -> None:
        shown = repr(key)
        if len(shown) > 120:
            shown = shown[:120] + "…"
        why = reason or f"keys of type {type(key).__name__} are not supported"
        super().__init__(
            f"{why}: {shown}. A key must be None, bool, int, float (not NaN), str, bytes, datetime.date "
            "or a tuple of these (convert others, e.g. a datetime with .isoformat() or .timestamp())"
        )
        self.key = key


def check_key(key: object) -> None:
    """Raises ``UnsupportedKeyError`` unless ``key`` is a key (rules 1 and 3). Cheap for scalars."""
    t = type(key)
    if t in _SCALARS or t is _DATE:
        return
    if t is float:
        if key != key:
            raise UnsupportedKeyError(key, "NaN is not a key (it is not equal to itself)")
        return
    if t is tuple:
        for item in key:  # type: ignore[attr-defined]
            if type(item) is float:  # a window (start, end) or a timer (domain, timestamp): no call
                if item != item:
                    raise UnsupportedKeyError(item, "NaN is not a key (it is not equal to itself)")
            elif type(item) not in _SCALARS:
                check_key(item)
        return
    if isinstance(key, _BASES):
        check_key(plain(key))
        return
    raise UnsupportedKeyError(key)


def plain(key: object) -> object:
    """A subclass instance of ``str``, ``int``, ``float``, ``bytes`` or ``tuple`` as its plain value
    (rule 1); other keys as they are."""
    if isinstance(key, bool):
        return bool(key)
    if isinstance(key, int):
        return int.__int__(key)
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, float):
        return float.__float__(key)
    if isinstance(key, bytes):
        return bytes(key)
    if isinstance(key, tuple):
        return tuple(key)
    return key


def returns_its_argument(fn: object) -> bool:
    """Whether ``fn`` is a plain function whose code is exactly that of ``lambda record: record``
    (one positional parameter, no free variables, no other argument): called with one record it can
    only return that record itself (rule 4). A conservative test: ``False`` says nothing."""
    if type(fn) is not FunctionType:
        return False
    code = fn.__code__
    return (code.co_code == _IDENTITY.co_code and code.co_argcount == 1 and code.co_kwonlyargcount == 0
            and not code.co_flags & _NOT_PLAIN
            and not code.co_freevars and not code.co_cellvars)
