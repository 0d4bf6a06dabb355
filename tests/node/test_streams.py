"""Stream chunks on the wire (``node.contract.streams``): what a chunk may be, and what comes back."""

from __future__ import annotations

import pytest

from node.contract.streams import MAX_CHUNK_BYTES, decode_chunk, encode_chunk


@pytest.mark.parametrize("value", ["token", {"t": 1, "p": [0.5]}, b"\x00raw", None, 10**30])
def test_a_chunk_comes_back_as_it_was_emitted(value):
    assert decode_chunk(encode_chunk(value)) == value


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        (object(), TypeError, "not JSON serializable"),
        (float("nan"), ValueError, "standard JSON"),
        ({"p": float("inf")}, ValueError, "standard JSON"),
        ("x" * (MAX_CHUNK_BYTES + 1), ValueError, "store it as an artifact"),
        (b"x" * (MAX_CHUNK_BYTES + 1), ValueError, "store it as an artifact"),
    ],
)
def test_a_chunk_no_reader_could_take_is_refused_in_the_actor(value, error, says):
    # (a 50 MB chunk went into the stream every reader of every stream job reads; NaN only Python reads)
    with pytest.raises(error, match=says):
        encode_chunk(value)


def test_a_chunk_of_the_largest_size_passes():
    assert len(encode_chunk(b"x" * MAX_CHUNK_BYTES)) == MAX_CHUNK_BYTES + 1
