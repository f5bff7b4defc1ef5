"""The rules of keys (``flowstate.state.keys``): every component that looks at a key agrees on what a
key is and on which keys are the same key, so that a job's output does not depend on where it runs.

The oracle is Python's own ``==``: the key-group hash and the RocksDB encoding must give equal bytes
exactly for equal keys (the hash may also collide, the encoding may not)."""

from __future__ import annotations

import datetime
import enum
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate.state.codec import encode_key
from flowstate.state.keygroups import key_group_of, stable_key_bytes
from flowstate.state.keys import UnsupportedKeyError, check_key

SCALARS = (st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1))
           | st.text(max_size=2) | st.binary(max_size=2) | st.dates(datetime.date(2024, 1, 1), datetime.date(2024, 1, 3)))
KEYS = st.recursive(SCALARS, lambda inner: st.tuples(inner) | st.tuples(inner, inner), max_leaves=6)


@given(KEYS, KEYS)
def test_keys_are_the_same_key_exactly_when_python_says_they_are_equal(a, b):
    check_key(a)
    check_key(b)
    equal = a == b
    assert (encode_key(a) == encode_key(b)) == equal
    if equal:
        assert stable_key_bytes(a) == stable_key_bytes(b)
        assert key_group_of(a, 128) == key_group_of(b, 128)


@pytest.mark.parametrize(("a", "b"), [(1, 1.0), (1, True), (0, -0.0), (False, 0.0), (("w", 2), ("w", 2.0))])
def test_one_one_point_zero_and_true_are_one_key_everywhere(a, b):
    assert stable_key_bytes(a) == stable_key_bytes(b)
    assert encode_key(a) == encode_key(b)


def test_subclasses_of_plain_types_are_their_plain_value():
    class Colour(enum.StrEnum):
        RED = "red"

    class Point(typing.NamedTuple):
        x: int
        y: int

    for key, value in [(Colour.RED, "red"), (Point(1, 2), (1, 2))]:
        check_key(key)
        assert stable_key_bytes(key) == stable_key_bytes(value)
        assert encode_key(key) == encode_key(value)


@pytest.mark.parametrize("key", [datetime.datetime(2024, 1, 1), float("nan"), (1, float("nan")), [1], {"a": 1},
                                 frozenset({1}), object(), ("ok", datetime.time(1))])
def test_what_is_not_a_key_is_refused_by_every_component_with_one_message(key):
    messages = set()
    for component in (check_key, stable_key_bytes, encode_key):
        with pytest.raises(UnsupportedKeyError, match="A key must be None, bool, int, float") as raised:
            component(key)
        messages.add(str(raised.value))
    assert len(messages) == 1


# ---- rule 4: a key selector that can only return its argument ------------------------------------


def _identity_made_inside_a_function():
    return lambda word: word


def _closure_over_a_variable():
    chosen = "x"
    return lambda word: chosen


def _plain_def(record):
    return record


def _with_varargs(record, *more):
    return record


def _generator(record):
    yield record


async def _coroutine(record):
    return record


def test_only_a_function_whose_code_is_lambda_record_record_returns_its_argument():
    from functools import partial

    from flowstate.state.keys import returns_its_argument

    assert returns_its_argument(lambda record: record)
    assert returns_its_argument(_plain_def)
    assert returns_its_argument(_identity_made_inside_a_function())
    for other in (lambda record: record[0], lambda record: (record,)[0], _closure_over_a_variable(), _with_varargs,
                  _generator, _coroutine, lambda *records: records, str, partial(_plain_def), len, None):
        assert not returns_its_argument(other), other
