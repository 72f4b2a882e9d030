"""Electron counting and the choice of representation."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import stemdask
import stemdask.events as ev
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.events.count import count_block_vectorised


def python_centroid(frame, threshold):
    """One electron per 3x3 local maximum (ties: first in raster order), written plainly."""
    ky, kx = frame.shape
    hits = np.zeros(frame.shape, np.int64)
    for y in range(ky):
        for x in range(kx):
            v = frame[y, x]
            if v < threshold:
                continue
            peak = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if (dy, dx) == (0, 0) or not (0 <= yy < ky and 0 <= xx < kx):
                        continue
                    earlier = dy < 0 or (dy == 0 and dx < 0)
                    w = frame[yy, xx]
                    if (earlier and w >= v) or (not earlier and w > v):
                        peak = False
            hits[y, x] = peak
    return hits


def test_counting_detector_frames_are_kept_exactly(rng):
    dense = rng.poisson(0.8, (4, 5, 9, 7)).astype(np.uint16)
    assert dense.max() >= 3  # several electrons in one pixel of one frame
    counted = ev.count_electrons(stemdask.from_array(dense, chunks=(2, 2), energy_ev=200e3), threshold=1)
    np.testing.assert_array_equal(ev.to_dense(counted).values, dense)
    assert counted.attrs["units"] == "electrons" and counted.attrs["counting_threshold"] == 1.0
    assert counted.attrs["energy_ev"] == 200e3


def test_dark_and_gain_are_applied(rng):
    electrons = rng.poisson(0.3, (3, 4, 6, 8))
    dark = rng.uniform(90, 110, (6, 8))
    gain = rng.uniform(0.02, 0.05, (6, 8))  # electrons per detector unit
    noise = rng.normal(0, 0.05, electrons.shape)
    raw = ((electrons + noise) / gain + dark).astype(np.float32)
    data = stemdask.from_array(raw, chunks=(2, 3))
    dark_da = xr.DataArray(dark, dims=("k_y", "k_x"))
    counted = ev.count_electrons(data, threshold=0.5, dark=dark_da, gain=gain)
    np.testing.assert_array_equal(ev.to_dense(counted).values, electrons)
    # without the references nothing matches
    assert not np.array_equal(ev.to_dense(ev.count_electrons(data, threshold=0.5)).values, electrons)


def test_centroid_counting_matches_plain_reference(rng):
    frames = np.round(rng.normal(0, 1, (3, 4, 10, 11)), 1)
    frames[rng.random(frames.shape) < 0.06] += 9.0
    frames[0, 0, 2, 2:4] = 12.0  # a tie: the first pixel in raster order wins
    counted = ev.count_electrons(stemdask.from_array(frames, chunks=(2, 2)), threshold=4.0, centroid=True)
    got = ev.to_dense(counted).values
    want = np.stack([python_centroid(f, 4.0) for f in frames.reshape(-1, 10, 11)]).reshape(frames.shape)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0, 2, 2] == 1 and got[0, 0, 2, 3] == 0
    block = count_block_vectorised(frames, np.zeros(110), np.ones(110), 4.0, True)
    np.testing.assert_array_equal(block.to_dense(), want)
    block = count_block_vectorised(frames, np.zeros(110), np.ones(110), 4.0, False)
    np.testing.assert_array_equal(block.to_dense(), np.where(frames >= 4, np.maximum(np.rint(frames), 1), 0))


def test_counting_arguments_are_checked(rng):
    data = stemdask.from_array(rng.random((2, 2, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="threshold=0"):
        ev.count_electrons(data, threshold=0)
    with pytest.raises(InvalidTypeError, match="threshold"):
        ev.count_electrons(data, threshold="1")
    with pytest.raises(InvalidArgumentError, match=r"dark=.*\(4, 4\)"):
        ev.count_electrons(data, threshold=1, dark=np.zeros((3, 4)))
    with pytest.raises(InvalidArgumentError, match="gain"):
        ev.count_electrons(data, threshold=1, gain=np.full((4, 4), np.inf))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ev.count_electrons(data, threshold=1, dtype=np.float32)


def test_choose_representation(rng):
    sparse = stemdask.from_array(rng.poisson(0.01, (4, 4, 16, 16)).astype(np.uint16), chunks=(2, 2))
    dense = stemdask.from_array(rng.poisson(2.0, (4, 4, 16, 16)).astype(np.uint16), chunks=(2, 2))
    assert ev.choose_representation(sparse) == "events"
    assert ev.choose_representation(dense) == "dense"
    assert ev.choose_representation(ev.from_dense(sparse)) == "events"
    assert ev.choose_representation(stemdask.from_array(np.zeros((2, 2, 4, 4), np.float32))) == "dense"
    assert ev.choose_representation(ev.CROSSOVER_E_PER_PIXEL / 2) == "events"
    assert ev.choose_representation(ev.CROSSOVER_E_PER_PIXEL * 2) == "dense"
    assert ev.electrons_per_pixel(dense, sample_blocks=None) == pytest.approx(dense.values.mean())
    auto = ev.as_representation(sparse)
    assert ev.is_counted(auto)
    np.testing.assert_array_equal(ev.to_dense(auto).values, sparse.values)
    assert not ev.is_counted(ev.as_representation(ev.from_dense(dense), "dense"))
    with pytest.raises(InvalidArgumentError, match="representation"):
        ev.as_representation(sparse, "sparse")
    with pytest.raises(InvalidArgumentError, match="data_or_stats"):
        ev.choose_representation(-1.0)


@pytest.mark.gpu
def test_counting_on_gpu_matches_cpu(rng):
    import cupy

    frames = np.round(rng.normal(0, 1, (2, 3, 16, 16)), 1)
    frames[rng.random(frames.shape) < 0.05] += 9.0
    for centroid in (False, True):
        cpu = ev.count_electrons(stemdask.from_array(frames, chunks=(1, 3)), threshold=4.0, centroid=centroid)
        gpu = ev.count_electrons(
            stemdask.from_array(cupy.asarray(frames), chunks=(1, 3)), threshold=4.0, centroid=centroid
        )
        block = gpu.data.compute()
        assert block.xp is cupy
        np.testing.assert_array_equal(cupy.asnumpy(block.to_dense()), ev.to_dense(cpu).values)
