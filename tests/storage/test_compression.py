"""Codecs of state files (``flowstate.storage.compression``)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowstate.storage.base import CorruptCheckpointError
from flowstate.storage.compression import CODECS, compress, decompress


@given(st.binary(max_size=5000), st.sampled_from(CODECS))
def test_every_codec_gives_back_the_bytes_it_was_given(data, codec):
    assert decompress(codec, compress(codec, data)) == data


def test_zstd_makes_a_pickled_state_much_smaller_and_none_leaves_it_as_it_is():
    state = pickle.dumps({f"key-{i}": i for i in range(20_000)})

    assert compress("none", state) == state
    assert len(compress("zstd", state)) < len(state) / 3


@pytest.mark.parametrize("codec", ["gzip", "ZSTD", "", None])
def test_an_unknown_codec_is_refused_naming_the_known_ones(codec):
    with pytest.raises(ValueError, match=r"unknown compression codec .*: use one of none, zstd"):
        compress(codec, b"x")
    with pytest.raises(ValueError, match="unknown compression codec"):
        decompress(codec, b"x")


def test_bytes_that_are_not_a_zstd_frame_are_reported_as_corrupt():
    frame = compress("zstd", b"state " * 100)

    with pytest.raises(CorruptCheckpointError, match="not a valid zstd frame"):
        decompress("zstd", frame[: len(frame) // 2])
