"""Event blocks: linear-index encoding against dense counts, selection, malformed input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stemdask
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.events import EventBlock, from_dense, index_dtype, to_dense


def dense_counts(max_count: int = 4):
    shapes = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 6), st.integers(1, 6))
    elements = st.integers(0, max_count) | st.just(0)
    return shapes.flatmap(lambda s: hnp.arrays(np.uint16, s, elements=elements))


@st.composite
def event_lists(draw):
    """Events drawn directly (unsorted within frames, repeats allowed)."""
    ny, nx = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    ky, kx = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    frames = [draw(st.lists(st.integers(0, ky * kx - 1), max_size=8)) for _ in range(ny * nx)]
    return (ny, nx, ky, kx), frames


def reference_dense(shape, frames):
    ny, nx, ky, kx = shape
    out = np.zeros((ny * nx, ky * kx), np.int64)
    for f, events in enumerate(frames):
        for p in events:
            out[f, p] += 1
    return out.reshape(shape)


@settings(max_examples=60, deadline=None)
@given(dense_counts())
def test_dense_to_events_round_trip(dense):
    block = EventBlock.from_dense(dense)
    assert block.n_events == int(dense.sum())
    assert block.indices.dtype == np.uint16
    np.testing.assert_array_equal(block.to_dense(), dense)
    np.testing.assert_array_equal(np.asarray(block), dense)


@settings(max_examples=60, deadline=None)
@given(event_lists())
def test_events_to_dense_round_trip(case):
    shape, frames = case
    indices = np.array([p for f in frames for p in f], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    block = EventBlock(indices, offsets, shape[:2], shape[2:])
    ref = reference_dense(shape, frames)
    np.testing.assert_array_equal(block.to_dense(), ref)
    again = EventBlock.from_dense(block.to_dense())
    np.testing.assert_array_equal(again.counts_per_frame(), block.counts_per_frame())
    np.testing.assert_array_equal(again.to_dense(), ref)


def test_big_endian_and_signed_counts():
    dense = np.random.default_rng(6).poisson(1.5, (2, 3, 4, 5))
    for dtype in (">u2", ">i4", "<i8", "u1"):
        block = EventBlock.from_dense(dense.astype(dtype))
        np.testing.assert_array_equal(block.to_dense(), dense)


def test_index_dtype_follows_detector_size():
    assert index_dtype(256 * 256) == np.uint16
    assert index_dtype(256 * 256 + 1) == np.uint32
    dense = np.zeros((1, 2, 300, 300), np.uint16)
    dense[0, 1, 299, 299] = 2
    block = EventBlock.from_dense(dense)
    assert block.indices.dtype == np.uint32
    np.testing.assert_array_equal(block.indices, [299 * 300 + 299] * 2)
    np.testing.assert_array_equal(block.to_dense(), dense)


def test_index_beyond_frame_is_rejected():
    with pytest.raises(InvalidArgumentError, match="indices.*below the 12 pixels"):
        EventBlock(np.array([3, 12]), np.array([0, 1, 2]), (1, 2), (3, 4))
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        EventBlock(np.array([3, -1]), np.array([0, 1, 2]), (1, 2), (3, 4))


def test_decreasing_offsets_are_rejected():
    with pytest.raises(InvalidArgumentError, match=r"offsets\[1\]=3 > offsets\[2\]=2.*non-decreasing"):
        EventBlock(np.array([1, 2, 3]), np.array([0, 3, 2, 3]), (1, 3), (2, 2))
    with pytest.raises(InvalidArgumentError, match="4 offsets"):
        EventBlock(np.array([1, 2, 3]), np.array([0, 3, 3]), (1, 3), (2, 2))
    with pytest.raises(InvalidArgumentError, match="last offset"):
        EventBlock(np.array([1, 2, 3]), np.array([0, 1, 2, 2]), (1, 3), (2, 2))
    with pytest.raises(InvalidArgumentError, match="starting at 0"):
        EventBlock(np.array([1, 2, 3]), np.array([1, 1, 2, 3]), (1, 3), (2, 2))


def test_float_data_and_overflow_are_rejected():
    with pytest.raises(InvalidArgumentError, match="integer electron counts"):
        EventBlock.from_dense(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        EventBlock.from_dense(-np.ones((1, 1, 2, 2), np.int16))
    block = EventBlock(np.zeros(300, np.uint16), np.array([0, 300]), (1, 1), (2, 2), np.uint8)
    with pytest.raises(InvalidArgumentError, match="holds 300 electrons"):
        block.to_dense()


@settings(max_examples=40, deadline=None)
@given(dense_counts(), st.data())
def test_selection_matches_numpy(dense, data):
    block = EventBlock.from_dense(dense)
    key = tuple(
        slice(
            data.draw(st.integers(-n - 1, n + 1) | st.none()),
            data.draw(st.integers(-n - 1, n + 1) | st.none()),
            data.draw(st.sampled_from([None, 1, 2, -1, -3])),
        )
        for n in dense.shape
    )
    np.testing.assert_array_equal(block[key].to_dense(), dense[key])


def test_list_selection_and_take():
    dense = np.random.default_rng(1).poisson(0.7, (3, 4, 5, 6)).astype(np.uint16)
    block = EventBlock.from_dense(dense)
    np.testing.assert_array_equal(block[:, [3, 0, 0]].to_dense(), dense[:, [3, 0, 0]])
    np.testing.assert_array_equal(np.take(block, [4, 1], axis=3).to_dense(), dense[..., [4, 1]])
    with pytest.raises(InvalidTypeError, match="stay 4-D"):
        block[0]
    with pytest.raises(InvalidArgumentError, match="repeated pixels"):
        block[:, :, [1, 1]]


def test_concatenate_and_sum_match_numpy():
    rng = np.random.default_rng(2)
    a = rng.poisson(0.5, (2, 3, 4, 5)).astype(np.uint16)
    b = rng.poisson(0.5, (2, 2, 4, 5)).astype(np.uint16)
    c = rng.poisson(0.5, (1, 3, 4, 5)).astype(np.uint16)
    ab = np.concatenate([EventBlock.from_dense(a), EventBlock.from_dense(b)], axis=1)
    np.testing.assert_array_equal(ab.to_dense(), np.concatenate([a, b], axis=1))
    ac = np.concatenate([EventBlock.from_dense(a), EventBlock.from_dense(c)], axis=-4)
    np.testing.assert_array_equal(ac.to_dense(), np.concatenate([a, c], axis=0))
    with pytest.raises(InvalidArgumentError, match="along the scan axes"):
        np.concatenate([EventBlock.from_dense(a), EventBlock.from_dense(a)], axis=2)
    block = EventBlock.from_dense(a)
    for axis in [None, 0, 1, 2, 3, (0, 1), (2, 3), (1, 2), (0, 3), (0, 1, 2)]:
        for keepdims in (False, True):
            got = np.sum(block, axis=axis, keepdims=keepdims)
            want = np.sum(a, axis=axis, keepdims=keepdims)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    with pytest.raises(InvalidTypeError, match="numpy.mean is not defined"):
        np.mean(block)
    with pytest.raises(InvalidTypeError, match="ufunc add"):
        np.add(block, 1)
    with pytest.raises(TypeError):
        block + 1


def test_pickle_keeps_events():
    dense = np.random.default_rng(3).poisson(0.4, (2, 2, 3, 3)).astype(np.uint16)
    block = pickle.loads(pickle.dumps(EventBlock.from_dense(dense)))
    np.testing.assert_array_equal(block.to_dense(), dense)


def test_counted_dataset_keeps_dims_coords_attrs(rng):
    dense = rng.poisson(0.2, (5, 7, 8, 6)).astype(np.uint16)
    data = stemdask.from_array(
        dense, chunks=(2, 3), energy_ev=200e3, scan_step_A=0.5, detector_pixel_mrad=0.8, semiangle_mrad=20
    )
    counted = from_dense(data)
    stemdask.validate(counted)
    assert counted.dims == data.dims and counted.dtype == data.dtype and counted.shape == data.shape
    for d in data.dims:
        np.testing.assert_array_equal(counted.coords[d], data.coords[d])
        assert counted.coords[d].attrs == data.coords[d].attrs
    assert {k: v for k, v in counted.attrs.items() if k != "representation"} == data.attrs
    assert counted.attrs["representation"] == "events"
    assert counted.data.chunks == data.data.chunks
    back = to_dense(counted)
    assert "representation" not in back.attrs
    np.testing.assert_array_equal(back.values, dense)
    # dask machinery on event chunks: rechunk, fancy and sliced selection, reductions
    np.testing.assert_array_equal(np.asarray(counted.chunk({"scan_y": 3, "scan_x": 7}).compute().data), dense)
    np.testing.assert_array_equal(to_dense(counted.isel(scan_x=[6, 1], k_y=slice(2, 5))).values, dense[:, [6, 1], 2:5])
    np.testing.assert_array_equal(counted.sum(("k_y", "k_x")).values, dense.sum((2, 3)))
    np.testing.assert_array_equal(counted.sum(("scan_y", "scan_x")).values, dense.sum((0, 1)))
    with pytest.raises(InvalidArgumentError, match="integer electron counts"):
        from_dense(data.astype(np.float32))
