"""The rules of state values, the same on every backend (``flowstate.state.memory``,
``flowstate.state.rocksdb``):

1. **A snapshot is the state at its barrier**, whatever the task does afterwards with the objects
   state reads returned or that it stored: a backend never lets a later change reach a snapshot.
2. **State holds the objects it returns.** A change made in place to a value read from state (or
   stored in it) during the call that read it is stored, as if it had been stored again: the objects
   of ``ValueState.value()``, ``ReducingState.get()`` (also the ``old`` a reduce function gets),
   ``MapState.get/values/items`` and the items of the list ``ListState.get()`` returns. That list
   itself is a new one: appending to it changes nothing (use ``add``). Keeping such an object past
   the call and changing it later is not supported: the backend may have written it by then.
3. **A default is never stored.** ``value()`` of a key without a value returns the default; a
   mutable default is a fresh copy every time, so that changing it changes nothing.

Why rule 2 rather than "only ``update()`` stores": on the heap that other rule costs a deep copy on
every read *and* every write of a mutable value (the task may change either object afterwards): a
dict-valued count ran at a quarter of the speed (docs/benchmarks.md, "Isolated state snapshots").
Rule 2 is what the heap does with plain objects anyway, and it costs one copy per mutable entry
accessed after each checkpoint (copy-on-write, rule 1).
RocksDB meets rule 2 with a write-back cache of the objects of the rows read or written since the
last snapshot, frozen in its synchronous part and encoded in the asynchronous part; meanwhile a read
of a frozen row gets a copy, as on the heap (``flowstate.state.rocksdb.cache``).
"""

from __future__ import annotations

import datetime
import decimal
import pickle
from typing import Any

_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None), range, datetime.date,
                        datetime.datetime, datetime.time, datetime.timedelta, decimal.Decimal})


def immutable(value: Any) -> bool:
    """Whether ``value`` can never change: a number, a string, bytes, ``None``, a date or time, or a
    tuple or frozenset of these."""
    t = type(value)
    if t in _IMMUTABLE:
        return True
    if t is tuple or t is frozenset:
        return all(immutable(item) for item in value)
    return False


def private(value: Any) -> Any:
    """``value`` itself when it is immutable, else a deep copy of it that shares nothing with it.

    The copy is a pickle round trip: state values must be picklable anyway (checkpoints pickle
    them), and for plain data it is faster than ``copy.deepcopy``."""
    if type(value) in _IMMUTABLE or immutable(value):
        return value
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


# What byte encoders other than pickle (msgpack for RocksDB rows, marshal for heap chain files) give back
# with its exact type. Both also take any object with the buffer protocol (``bytearray``,
# ``memoryview``, ``array.array``, a NumPy array) and give back ``bytes``: a value holding one must be
# pickled. Subclasses of these types are not here either (both encoders refuse them, or drop the class).
_ENCODABLE = frozenset({type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset})
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes})


def plain_data(values: Any) -> bool:
    """Whether every object in the collection ``values`` (a list, tuple, set or the values of a dict
    view), and in every container inside them, is of a type that msgpack and marshal give back exactly:
    ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, and lists, tuples, dicts,
    sets and frozensets of these. ``False`` means: pickle it. One C-level pass over ``values`` when
    they are all scalars (about 15 ms for a million)."""
    types = set(map(type, values))
    if types <= _SCALARS:
        return True
    if not types <= _ENCODABLE:
        return False
    for value in values:
        t = type(value)
        if t in _SCALARS:
            continue
        if t is dict:
            if not (plain_data(value.keys()) and plain_data(value.values())):
                return False
        elif not plain_data(value):
            return False
    return True

