"""Run-length encoding with a repeat code: round trips and malformed codes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemdask.errors import FileFormatError
from stemdask.events import EventBlock, RunLengthEvents, rle_decode, rle_encode
from stemdask.events.rle import code_dtype


@st.composite
def blocks(draw):
    ny, nx = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    big = draw(st.booleans())
    ky, kx = (
        (draw(st.integers(1, 300)), draw(st.integers(200, 300)))
        if big
        else (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    )
    m = ky * kx
    frames = [draw(st.lists(st.integers(0, m - 1) | st.sampled_from([0, m - 1]), max_size=10)) for _ in range(ny * nx)]
    indices = np.array([p for f in frames for p in f], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    return EventBlock(indices, offsets, (ny, nx), (ky, kx))


@settings(max_examples=80, deadline=None)
@given(blocks())
def test_rle_round_trip(block):
    rle = rle_encode(block)
    assert rle.codes.dtype == code_dtype(block.n_pixels)
    back = rle_decode(rle)
    np.testing.assert_array_equal(back.offsets, block.offsets)  # same electrons per frame
    np.testing.assert_array_equal(back.to_dense(), block.to_dense())
    # decoded events are sorted in their frames; encoding them again gives the same codes
    again = rle_encode(back)
    np.testing.assert_array_equal(again.codes, rle.codes)


def test_rle_codes_by_hand():
    # frame 0: pixels 2, 2, 2, 5 ; frame 1: empty ; frame 2: pixel 0
    block = EventBlock(np.array([2, 5, 2, 2, 0]), np.array([0, 4, 4, 5]), (1, 3), (2, 4))
    rle = rle_encode(block)
    # pixel 2 after -1: gap 2, repeat flag -> 5, then count 3; pixel 5: gap 2 -> 4; pixel 0: gap 0 -> 0
    np.testing.assert_array_equal(rle.codes, [5, 3, 4, 0])
    np.testing.assert_array_equal(rle.offsets, [0, 3, 3, 4])
    assert rle.codes.dtype == np.uint16


def test_malformed_rle_is_rejected():
    good = rle_encode(EventBlock(np.array([1, 3]), np.array([0, 1, 2]), (1, 2), (2, 2)))
    past_frame = RunLengthEvents(np.array([8], np.uint16), np.array([0, 1, 1]), (1, 2), (2, 2), np.dtype("uint16"))
    with pytest.raises(FileFormatError, match="frame 0 are malformed"):
        rle_decode(past_frame)
    no_count = RunLengthEvents(np.array([0, 1], np.uint16), np.array([0, 1, 2]), (1, 2), (2, 2), np.dtype("uint16"))
    with pytest.raises(FileFormatError, match="frame 1 are malformed"):
        rle_decode(no_count)
    decreasing = RunLengthEvents(
        np.array([0, 0, 0], np.uint16), np.array([0, 2, 1, 3]), (1, 3), (2, 2), np.dtype("uint16")
    )
    with pytest.raises(FileFormatError, match="decrease at frame 1"):
        rle_decode(decreasing)
    truncated = RunLengthEvents(good.codes[:1], good.offsets, (1, 2), (2, 2), np.dtype("uint16"))
    with pytest.raises(FileFormatError, match="offsets must be 3 values"):
        rle_decode(truncated)
