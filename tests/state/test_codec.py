"""Byte encodings of keys and values (``flowstate.state.codec``): round trips and canonical keys."""

from __future__ import annotations

import array
import datetime
import enum
import pickle
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate.state.codec import (
    ValueCodec,
    decode_key,
    encode_key,
    read_varint,
    varint,
)
from flowstate.state.keys import UnsupportedKeyError
from flowstate.state.rocksdb import key_prefix, split_prefix, successor

SCALAR_KEYS = (st.none() | st.booleans() | st.integers() | st.text() | st.binary() | st.floats(allow_nan=False)
               | st.dates())
KEYS = st.recursive(SCALAR_KEYS, lambda inner: st.tuples(inner) | st.tuples(inner, inner) | st.lists(inner).map(tuple),
                    max_leaves=12)
INT64 = st.integers(-(2**63), 2**64 - 1)
PLAIN = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner) | st.lists(inner).map(tuple) | st.dictionaries(st.text() | INT64, inner),
    max_leaves=20,
)
ANY_VALUE = st.recursive(
    PLAIN | st.integers() | st.fractions() | st.frozensets(st.integers()) | st.complex_numbers(allow_nan=False)
    | st.binary().map(bytearray),
    lambda inner: st.lists(inner) | st.lists(inner).map(tuple) | st.dictionaries(st.integers() | st.text(), inner),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equal, with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    return a == b


def normal(key: object) -> object:
    """What a key decodes to: numbers that equal an int become that int."""
    if type(key) is bool:
        return int(key)
    if type(key) is float and key.is_integer():
        return int(key)
    if type(key) is tuple:
        return tuple(normal(k) for k in key)
    return key


@given(KEYS)
def test_a_key_decodes_to_itself_up_to_equal_numbers(key):
    assert same(decode_key(encode_key(key)), normal(key))


@given(KEYS, KEYS)
def test_equal_keys_encode_to_equal_bytes_and_different_keys_to_different_bytes(a, b):
    assert (encode_key(a) == encode_key(b)) == (normal(a) == normal(b) and same(normal(a), normal(b)))


@pytest.mark.parametrize(("a", "b"), [(True, 1), (False, 0), (2.0, 2), (-0.0, 0), (0.0, False), (("x", 1.0), ("x", 1))])
def test_numbers_that_compare_equal_are_one_key(a, b):
    assert a == b and encode_key(a) == encode_key(b)


@pytest.mark.parametrize("key", [float("nan"), ("a", float("nan")), Fraction(1, 3), ("a", frozenset({1})),
                                 datetime.datetime(2024, 1, 2), [1], object()])
def test_what_is_not_a_key_is_refused_not_pickled(key):
    with pytest.raises(UnsupportedKeyError, match="A key must be"):
        encode_key(key)


def test_dates_and_subclasses_of_plain_types_are_keys():
    day = datetime.date(2024, 2, 29)
    assert decode_key(encode_key(day)) == day and type(decode_key(encode_key(day))) is datetime.date
    assert decode_key(encode_key((day, "x"))) == (day, "x")
    assert encode_key(day) != encode_key(day.toordinal())

    class Colour(enum.StrEnum):
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    assert encode_key(Colour.RED) == encode_key("red")
    assert encode_key((Size.BIG, Colour.RED)) == encode_key((3, "red"))


def test_an_unknown_tag_is_an_error():
    with pytest.raises(ValueError, match="unknown tag 200"):
        decode_key(bytes([200]))
    with pytest.raises(ValueError, match="unknown tag 9"):
        ValueCodec().decode(bytes([9, 0]))


@given(ANY_VALUE)
def test_a_value_decodes_to_an_equal_value_of_the_same_types(value):
    codec = ValueCodec()
    assert same(codec.decode(codec.encode(value)), value)


@pytest.mark.parametrize("value", [bytearray(b"x"), [1, bytearray(b"x")], {"a": (bytearray(),)},
                                   {bytearray(b"k").decode(): array.array("b", [1])}])
def test_a_value_holding_a_buffer_is_pickled_so_that_it_keeps_its_type(value):
    # msgpack would pack a bytearray (any buffer) as bytes, which come back as bytes.
    codec = ValueCodec()
    encoded = codec.encode(value)
    assert encoded[0] == 2 and same(codec.decode(encoded), value)


@given(PLAIN)
def test_plain_data_is_encoded_with_msgpack_not_pickle(value):
    assert ValueCodec().encode(value)[0] == 1


@given(st.lists(ANY_VALUE, max_size=5))
def test_one_codec_encodes_many_values_in_a_row_even_after_a_fallback(values):
    codec = ValueCodec()
    encoded = [codec.encode(v) for v in values]
    assert all(same(codec.decode(e), v) for e, v in zip(encoded, values, strict=True))


@pytest.mark.parametrize("value", [5, ("key", 12345), {"count": 3, "sum": 2.5}, [1, 2, 3]])
def test_plain_data_encodes_smaller_than_its_pickle(value):
    assert len(ValueCodec().encode(value)) < len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


@given(st.integers(0, 2**70))
def test_varints_round_trip(n):
    data = b"x" + varint(n) + b"y"
    assert read_varint(data, 1) == (n, len(data) - 1)


@given(KEYS, st.sampled_from([1, 128, 32768]))
def test_a_key_prefix_starts_with_the_key_group_and_gives_the_key_back(key, maxp):
    from flowstate.state.keygroups import key_group_of

    prefix = key_prefix(key, maxp)
    assert int.from_bytes(prefix[:2], "big") == key_group_of(key, maxp)
    row = prefix + b"\x00\x00rest"
    assert split_prefix(row)[0] == prefix
    assert same(split_prefix(row)[1], normal(key))


@given(KEYS, KEYS)
def test_no_key_prefix_is_a_proper_prefix_of_another(a, b):
    pa, pb = key_prefix(a, 128), key_prefix(b, 128)
    assert pa == pb or not pb.startswith(pa)


@given(st.binary(min_size=1))
def test_successor_is_above_every_extension_of_the_prefix(prefix):
    after = successor(prefix)
    if after is None:
        assert set(prefix) == {0xFF}
    else:
        assert after > prefix + b"\xff" * 8 and not after.startswith(prefix)
