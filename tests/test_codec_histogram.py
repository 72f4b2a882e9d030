"""The lossless per-pixel-histogram codec: round trips, frozen format, corruption, zarr/xarray/dask."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stemdask.codecs import CODECS, resolve_codec
from stemdask.codecs.histogram import (
    CODEC_NAME,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    ChunkCorruptError,
    HistogramCodec,
    HistogramModel,
    decode_chunk,
    decode_chunk_events,
    encode_chunk,
    read_header,
)
from stemdask.errors import InvalidArgumentError, InvalidTypeError

DTYPES = ["u1", "u2", "u4", "i1", "i2", "i4", ">u2", ">i4"]
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _empirical_entropy_bits(x: np.ndarray) -> float:
    """Sum over detector pixels of frames * H(pixel's histogram) -- plain NumPy reference."""
    frames = x.reshape(-1, x.shape[-2] * x.shape[-1])
    total = 0.0
    for col in frames.T:
        _, counts = np.unique(col, return_counts=True)
        p = counts / col.size
        total += -(counts * np.log2(p)).sum()
    return total


@st.composite
def integer_chunks(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    info = np.iinfo(dtype)
    kind = draw(st.sampled_from(["counts", "full", "offset"]))
    if kind == "full":
        elements = st.integers(int(info.min), int(info.max))
    elif kind == "counts":
        elements = st.integers(0, min(int(info.max), 5))
    else:
        lo = draw(st.integers(int(info.min), int(info.max) - 3))
        elements = st.integers(lo, lo + 3)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FAST
@given(integer_chunks(), st.integers(1, 300))
def test_round_trip_is_bit_exact(x, max_symbols):
    data = encode_chunk(x, max_symbols=max_symbols)
    y = decode_chunk(data, shape=x.shape, dtype=x.dtype)
    assert y.shape == x.shape
    assert y.dtype == x.dtype.newbyteorder("=")
    np.testing.assert_array_equal(y, x)


@FAST
@given(integer_chunks())
def test_shared_model_round_trip(x):
    if x.ndim < 2 or x.size == 0:
        return
    train = np.concatenate([x.reshape(-1, *x.shape[-2:])[:1], np.zeros((1, *x.shape[-2:]), x.dtype)])
    model = HistogramModel.fit(train, max_symbols=4)
    again = HistogramModel.from_json(json.loads(json.dumps(model.to_json())))
    data = encode_chunk(x, model=model)
    np.testing.assert_array_equal(decode_chunk(data, model=again), x)


def test_extreme_values_and_escapes():
    for name in ["u1", "u2", "u4", "i1", "i2", "i4"]:
        info = np.iinfo(name)
        x = np.zeros((5, 3, 4), name)
        x[0, 0, 0], x[4, 2, 3], x[2, 1, 1] = info.max, info.min, info.max - 1
        for max_symbols in (1, 2, 256):
            np.testing.assert_array_equal(decode_chunk(encode_chunk(x, max_symbols=max_symbols)), x)


def test_many_frames_per_chunk(rng):
    """Over 65536 frames the frame coder divides instead of using its reciprocal table."""
    x = rng.poisson(0.5, size=(70_000, 1, 2)).astype(np.uint8)
    x[-1, 0, 1] = 200
    data = encode_chunk(x)
    np.testing.assert_array_equal(decode_chunk(data), x)
    assert 8 * len(data) < 1.02 * _empirical_entropy_bits(x) + 8 * 200


def _decoder_paths_chunk(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Counts of shape (frames // 50, 50, 3, 4) whose pixels take every path of the self-contained decoder."""
    x = np.zeros((frames, 12), np.uint16)
    x[-1, 1] = 1  # one non-zero frame: the last gap is uniform
    x[[3, frames - 2], 2] = 1  # two, far apart: the exact law of two gaps, or the geometric law past 4096
    x[[0, frames // 2, frames - 1], 3] = 2  # three, gaps beyond the geometric table (escapes)
    x[rng.choice(frames, frames // 5, replace=False), 4] = rng.integers(1, 4, frames // 5)  # sparse, 3 bins
    x[:, 5] = rng.poisson(1.1, frames)  # dense, 5-10 bins (the branch-free count)
    x[:, 6] = rng.poisson(12.0, frames)  # dense, > 10 bins (the search)
    x[:, 7] = rng.poisson(12.0, frames) + 30 * (rng.random(frames) < 0.05)  # dense, with escapes
    x[rng.choice(frames, 2, replace=False), 8] = 5  # two gaps anywhere
    x[rng.choice(frames, 7, replace=False), 9] = 1
    x[:, 10] = rng.random(frames) < 0.3  # just sparse (3 k <= n), one value
    x[:, 11] = rng.random(frames) < 0.4  # just dense, two values
    return x.reshape(frames // 50, 50, 3, 4)


@pytest.mark.parametrize("frames", [250, 3000, 4100, 5000])
def test_every_decoder_path_round_trips_and_decodes_to_events(rng, frames):
    """Large chunks reach the paths tiny hypothesis chunks cannot: gap laws, escapes, many bins."""
    from stemdask.events.block import EventBlock

    x = _decoder_paths_chunk(rng, frames)
    counts = x.reshape(frames, 12).astype(np.int64)
    indices = np.concatenate([np.repeat(np.arange(12), f) for f in counts])
    offsets = np.concatenate([[0], np.cumsum(counts.sum(axis=1))])
    for version in FORMAT_VERSIONS:
        data = encode_chunk(x, max_symbols=40, format_version=version)
        np.testing.assert_array_equal(decode_chunk(data), x)
        events = decode_chunk_events(data)
        assert isinstance(events, EventBlock)
        np.testing.assert_array_equal(events.indices, indices)
        np.testing.assert_array_equal(events.offsets, offsets)


@pytest.mark.parametrize("dose", [0.0, 0.01, 0.1, 1.0, 10.0])
def test_counted_data_round_trips_at_every_dose(rng, dose):
    """256 frames of a disc with a dark-field falloff (sparse and dense pixels), dense and as events."""
    yy, xx = np.mgrid[:16, :16]
    lam = dose * np.where(np.hypot(yy - 7.5, xx - 7.5) < 4, 10.0, 0.3)
    x = rng.poisson(lam, size=(16, 16, 16, 16)).astype(np.uint16)
    for version in FORMAT_VERSIONS:
        data = encode_chunk(x, format_version=version)
        np.testing.assert_array_equal(decode_chunk(data), x)
        np.testing.assert_array_equal(decode_chunk_events(data).to_dense(), x)
    one = x[:1, :1]  # one frame
    np.testing.assert_array_equal(decode_chunk(encode_chunk(one)), one)
    np.testing.assert_array_equal(decode_chunk_events(encode_chunk(one)).to_dense(), one)


def test_counted_data_compresses_near_the_entropy(rng):
    """Sparse Poisson frames (256 frames) code within a few % of the per-pixel entropy, far below zlib."""
    lam = np.linspace(0.02, 1.0, 32 * 32).reshape(32, 32)
    x = rng.poisson(lam, size=(256, 32, 32)).astype(np.uint16)
    bits = 8 * len(encode_chunk(x))
    entropy = _empirical_entropy_bits(x)
    assert bits < 1.06 * entropy
    assert bits < len(zlib.compress(x.tobytes(), 9)) * 8 / 1.5


# -- the frozen format ------------------------------------------------------

GOLDEN_INPUT_SHAPE = (3, 4, 5)
GOLDEN_HEX = (
    "534448430100020303000000040000000500000000000000000000000000000000000000040000000000000001"
    "ed0ddeed30921bb57d0ad50870be0d5b517f51c8d549d14d53e2e94dcb22431e95812c626e286b41e15c"
)
GOLDEN_SHARED_SHA256 = "71f2fe83d48179c8ce31e9fba4dd4232f2989973122dfef3712f0d2df3a79253"
GOLDEN_MODEL = {
    "detector_shape": [4, 4],
    "offset": -30000,
    "n_symbols": 8,
    "frequencies": "eNqTcZdhR4HtaHx2meMjWQQAiN8fsQ==",
    "crc32": 2431715245,
}


def _golden_input():
    x = ((np.arange(60, dtype=np.int64) * 7) % 5).reshape(GOLDEN_INPUT_SHAPE).astype("<u2")
    x[1, 2, 3] = 1000  # an escape with max_symbols=4
    return x


def _golden_shared_input():
    y = (np.arange(96) % 3).reshape(2, 3, 4, 4).astype("i2") - 1
    y[0, 0, 0, 0] = -30000
    return y


def test_golden_bytes_freeze_the_format():
    x = _golden_input()
    assert encode_chunk(x, max_symbols=4, format_version=1).hex() == GOLDEN_HEX
    np.testing.assert_array_equal(decode_chunk(bytes.fromhex(GOLDEN_HEX)), x)
    header = read_header(bytes.fromhex(GOLDEN_HEX))
    assert header["version"] == 1 and FORMAT_VERSIONS == (1, 2)
    assert header["shape"] == GOLDEN_INPUT_SHAPE and header["dtype"] == np.uint16
    assert (header["base"], header["n_symbols"]) == (0, 4)


GOLDEN_SKEWED_SHA256 = "572454fcaa070e0e1606a77d136b3eeaf4e6d991c0d927a658d68e0344a3ce32"


def test_golden_bytes_skewed_histograms():
    """Pixels with unequal bin counts (the bin order of the frame coder is part of the format)."""
    h = (np.arange(256, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    v = ((h >> np.uint64(8)) % np.uint64(10)).astype(np.int64)
    x = np.where(v < 6, 0, v - 5).astype(np.uint8).reshape(16, 4, 4)
    x[::5, 1, 2] += 3
    data = encode_chunk(x, format_version=1)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SKEWED_SHA256
    np.testing.assert_array_equal(decode_chunk(data), x)


GOLDEN_V2_HEX = (
    "534448430200020303000000040000000500000000000000000000000000000000000000040000000000000001"
    "ed0ddeed30921bb57d0ad50870be0d5b517f51c8d549d14d53e2e94dcb22431e95812c626e2898d8ea80"
)
GOLDEN_V2_SPARSE_SHA256 = "9443a23b28dc795d3b9fa4dd4c45144f4e8cd273c2ecd92d3827b4fdeeb36c91"


def _golden_sparse_input():
    """Counted-like data: mostly zeros, some 1-3, one escape; pixels sparse and dense."""
    h = (np.arange(32 * 30, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    v = ((h >> np.uint64(7)) % np.uint64(40)).astype(np.int64)
    x = np.where(v < 36, 0, v - 35).astype(np.uint16).reshape(4, 8, 6, 5)
    x[:, :, 0, 0] = 2  # a pixel without zeros
    x[1, 2, 3, 4] = 900  # an escape with max_symbols=8
    return x


def test_golden_bytes_version_2():
    """Version 2 (the default): dense pixels as in version 1, sparse ones by their gaps."""
    x = _golden_input()
    assert FORMAT_VERSION == 2
    assert encode_chunk(x, max_symbols=4).hex() == GOLDEN_V2_HEX
    np.testing.assert_array_equal(decode_chunk(bytes.fromhex(GOLDEN_V2_HEX)), x)
    y = _golden_sparse_input()
    data = encode_chunk(y, max_symbols=8)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_V2_SPARSE_SHA256
    np.testing.assert_array_equal(decode_chunk(data), y)
    # within 1 % of version 1 on the same data
    assert len(data) <= 1.01 * len(encode_chunk(y, max_symbols=8, format_version=1)) + 8


@FAST
@given(integer_chunks(), st.integers(1, 300), st.sampled_from(FORMAT_VERSIONS))
def test_every_format_version_round_trips(x, max_symbols, version):
    data = encode_chunk(x, max_symbols=max_symbols, format_version=version)
    assert read_header(data)["version"] == version
    y = decode_chunk(data)
    assert y.dtype == x.dtype.newbyteorder("=") and y.shape == x.shape
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate", [0.003, 0.05, 0.4, 3.0])
def test_decode_to_events_equals_dense_decode_then_counting(rng, rate):
    from stemdask.events.block import EventBlock

    x = rng.poisson(rate, size=(3, 5, 7, 6)).astype(np.uint16)
    x[0, 0, 1, 1] = 400  # an escape
    for version in FORMAT_VERSIONS:
        data = encode_chunk(x, max_symbols=16, format_version=version)
        events = decode_chunk_events(data)
        # reference: NumPy, frame by frame, pixel index repeated by its count
        frames = x.reshape(15, 42)
        indices = np.concatenate([np.repeat(np.arange(42), f) for f in frames])
        offsets = np.concatenate([[0], np.cumsum(frames.sum(axis=1))])
        assert events.scan_shape == (3, 5) and events.frame_shape == (7, 6)
        np.testing.assert_array_equal(events.indices, indices)
        np.testing.assert_array_equal(events.offsets, offsets)
        assert isinstance(events, EventBlock)
    # more electrons than the first guess of room (a retry), and signed counts
    hot = np.zeros((2, 2, 4, 4), np.int16)
    hot[..., 1, 2] = 5000
    hot[0, 1, 3, 3] = 2
    for chunk in (hot, hot.astype(np.uint16)):
        events = decode_chunk_events(encode_chunk(chunk))
        frames = chunk.reshape(4, 16).astype(np.int64)
        np.testing.assert_array_equal(events.indices, np.concatenate([np.repeat(np.arange(16), f) for f in frames]))
        np.testing.assert_array_equal(events.offsets, np.concatenate([[0], np.cumsum(frames.sum(axis=1))]))
        assert events.dtype == chunk.dtype
    with pytest.raises(InvalidArgumentError, match="4 axes"):
        decode_chunk_events(encode_chunk(x[0]))
    with pytest.raises(InvalidArgumentError, match="counts"):
        decode_chunk_events(encode_chunk(x.astype(np.int16) - 1))


def test_golden_bytes_shared_model():
    y = _golden_shared_input()
    model = HistogramModel.from_json(GOLDEN_MODEL)
    assert model.to_json() == GOLDEN_MODEL
    fitted = HistogramModel.fit(y[:1], max_symbols=8)
    assert fitted.to_json() == GOLDEN_MODEL
    data = encode_chunk(y, model=model, format_version=1)
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHARED_SHA256
    np.testing.assert_array_equal(decode_chunk(data, model=model), y)
    # version 2 codes shared-model chunks as version 1 did: only the version byte and the CRC differ
    new = encode_chunk(y, model=model)
    assert new[:4] + new[5:-4] == data[:4] + data[5:-4] and new[4] == 2
    np.testing.assert_array_equal(decode_chunk(new, model=model), y)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_is_checked_on_decode():
    data = bytearray(bytes.fromhex(GOLDEN_HEX)[:-4])
    data[4] = 3  # a future format version, with a valid checksum
    with pytest.raises(ChunkCorruptError, match="format version 3"):
        decode_chunk(_with_crc(bytes(data)))
    with pytest.raises(ChunkCorruptError, match="magic"):
        decode_chunk(b"PK\x03\x04" + bytes.fromhex(GOLDEN_HEX)[4:])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corrupted_or_truncated_chunks_raise(data):
    good = bytes.fromhex(GOLDEN_HEX)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(good) - 1))
        bad = good[:cut]
    else:
        pos = data.draw(st.integers(0, len(good) - 1))
        flip = data.draw(st.integers(1, 255))
        bad = bytearray(good)
        bad[pos] ^= flip
        bad = bytes(bad)
    with pytest.raises(ChunkCorruptError):
        decode_chunk(bad)


def _garbled_payload(data, good: bytes, ndim: int) -> bytes:
    """``good`` with 1-4 bytes of its range-coded payload overwritten, maybe cut short, and its CRC recomputed."""
    header_len = 8 + 4 * ndim + 24
    payload = bytearray(good[header_len:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    return _with_crc(good[:header_len] + bytes(payload))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_decoder_survives_garbage_with_valid_checksum(data):
    """Fuzz the payload decoder itself (checksum recomputed): an error or an array, never a crash or hang."""
    x = np.random.default_rng(3).poisson(data.draw(st.sampled_from([0.05, 0.7])), size=(6, 5, 7)).astype(np.int16)
    good = encode_chunk(x, max_symbols=3, format_version=data.draw(st.sampled_from(FORMAT_VERSIONS)))
    try:
        y = decode_chunk(_garbled_payload(data, good, x.ndim))
    except ChunkCorruptError:
        return
    assert y.shape == (6, 5, 7) and y.dtype == np.int16


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_decoder_survives_garbage_in_large_chunks(data):
    """The same on 400-frame chunks, whose pixels take the gap laws and the many-bin paths."""
    x = _decoder_paths_chunk(np.random.default_rng(5), 400)
    good = encode_chunk(x, max_symbols=40, format_version=data.draw(st.sampled_from(FORMAT_VERSIONS)))
    chunk = _garbled_payload(data, good, x.ndim)
    for decode in (decode_chunk, decode_chunk_events):
        try:
            y = decode(chunk)
        except ChunkCorruptError:
            continue
        assert y.shape == x.shape


def test_events_decoder_refuses_an_escape_below_the_minimum():
    """A header edited (checksum recomputed) so that an escaped count decodes below 0: an error, not a crash."""
    x = np.zeros((2, 2, 4, 4), np.int16)
    x[1, 0, 2, 3] = 300  # an escape with max_symbols=16
    good = encode_chunk(x, max_symbols=16)
    head = 8 + 4 * 4
    assert struct.unpack_from("<qq", good, head) == (0, 0)  # base, emin
    bad = _with_crc(good[:head] + struct.pack("<qq", 0, -1000) + good[head + 16 : -4])
    with pytest.raises(ChunkCorruptError):
        decode_chunk_events(bad)
    np.testing.assert_array_equal(decode_chunk_events(good).to_dense(), x)


def test_wrong_model_or_missing_model_raises():
    y = _golden_shared_input()
    model = HistogramModel.from_json(GOLDEN_MODEL)
    data = encode_chunk(y, model=model)
    with pytest.raises(ChunkCorruptError, match="shared model"):
        decode_chunk(data)
    other = HistogramModel.fit(y[1:], max_symbols=8)
    with pytest.raises(ChunkCorruptError, match="another shared model"):
        decode_chunk(data, model=other)
    with pytest.raises(ChunkCorruptError, match="shape"):
        decode_chunk(bytes.fromhex(GOLDEN_HEX), shape=(3, 4, 6))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(InvalidArgumentError, match="float32"):
        encode_chunk(np.zeros((2, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="max_symbols"):
        HistogramCodec(max_symbols=0)
    with pytest.raises(InvalidTypeError, match="max_symbols"):
        HistogramCodec(max_symbols=2.5)
    with pytest.raises(InvalidTypeError, match="model"):
        HistogramCodec(model="prior.npy")
    with pytest.raises(InvalidArgumentError, match="model"):
        HistogramModel.from_json({**GOLDEN_MODEL, "crc32": 1})


# -- zarr v3, xarray, entry point, dask --------------------------------------


def _store(path, x, codec, chunks, shards=None):
    z = zarr.create_array(
        str(path), shape=x.shape, chunks=chunks, shards=shards, dtype=x.dtype, serializer=codec, compressors=None
    )
    z[...] = x
    return z


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "i1", "i2", "i4"])
def test_zarr_round_trip_with_edge_chunks_and_shards(tmp_path, rng, dtype):
    x = rng.poisson(0.8, size=(5, 7, 6, 9)).astype(dtype)
    x[4, 6, 5, 8] = np.iinfo(dtype).max
    _store(tmp_path / "plain.zarr", x, HistogramCodec(), chunks=(2, 3, 6, 9))
    _store(tmp_path / "shard.zarr", x, HistogramCodec(max_symbols=4), chunks=(2, 2, 6, 9), shards=(4, 4, 6, 9))
    for name in ("plain.zarr", "shard.zarr"):
        z = zarr.open_array(str(tmp_path / name), mode="r")
        np.testing.assert_array_equal(z[...], x)
        np.testing.assert_array_equal(z[3:5, 1:7:2, 2, :], x[3:5, 1:7:2, 2, :])


def test_codec_metadata_round_trip_and_shared_model_in_metadata(tmp_path, rng):
    x = rng.poisson(0.3, size=(4, 4, 8, 8)).astype(np.uint16)
    model = HistogramModel.fit(x[:2])
    codec = HistogramCodec(max_symbols=16, model=model)
    as_dict = json.loads(json.dumps(codec.to_dict()))
    assert as_dict["name"] == CODEC_NAME
    assert HistogramCodec.from_dict(as_dict) == codec
    _store(tmp_path / "m.zarr", x, codec, chunks=(1, 1, 8, 8))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "m.zarr"))[...], x)
    with pytest.raises(InvalidArgumentError, match="detector shape"):
        zarr.create_array(
            str(tmp_path / "bad.zarr"),
            shape=(4, 8, 9),
            chunks=(1, 8, 9),
            dtype="u2",
            serializer=codec,
            compressors=None,
        )
    with pytest.raises(InvalidArgumentError, match="format_version"):
        HistogramCodec.from_dict({"name": CODEC_NAME, "configuration": {"format_version": 3}})


@pytest.mark.parametrize("dtype", ["f4", "i8", "u8", "bool"])
def test_unsupported_dtype_fails_at_array_creation(tmp_path, dtype):
    for shards in (None, (4, 4, 4)):
        with pytest.raises(InvalidArgumentError, match="histogram codec supports"):
            zarr.create_array(
                str(tmp_path / f"x{shards is None}.zarr"),
                shape=(4, 4, 4),
                chunks=(2, 4, 4),
                shards=shards,
                dtype=dtype,
                serializer=HistogramCodec(),
                compressors=None,
            )


def test_named_codec_and_xarray_encoding(tmp_path, rng):
    assert "histogram" in CODECS
    choice = resolve_codec("histogram")
    assert isinstance(choice.serializer, HistogramCodec) and choice.compressors == ()
    x = rng.poisson(0.5, size=(4, 6, 8, 8)).astype(np.uint16)
    ds = xr.Dataset({"intensity": (("scan_y", "scan_x", "k_y", "k_x"), x)})
    ds.to_zarr(
        tmp_path / "x.zarr",
        zarr_format=3,
        consolidated=False,
        encoding={"intensity": {"serializer": HistogramCodec(), "compressors": None, "chunks": (2, 3, 8, 8)}},
    )
    back = xr.open_zarr(tmp_path / "x.zarr", consolidated=False, zarr_format=3)
    np.testing.assert_array_equal(back["intensity"].values, x)
    meta = json.loads((tmp_path / "x.zarr" / "intensity" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == CODEC_NAME


def test_stemdask_save_with_histogram_codec(tmp_path, rng):
    import stemdask

    x = rng.poisson(0.5, size=(4, 6, 8, 8)).astype(np.uint16)
    path = stemdask.save(stemdask.from_array(x), tmp_path / "s.zarr", codec="histogram", chunks=(2, 3))
    back = stemdask.open_dataset(path)
    np.testing.assert_array_equal(np.asarray(back.values), x)
    metadata = [p.read_text() for p in (tmp_path / "s.zarr").rglob("zarr.json")]
    assert any(CODEC_NAME in text for text in metadata)


def test_fresh_process_decodes_through_the_entry_point(tmp_path, rng):
    x = rng.poisson(0.4, size=(3, 4, 8, 8)).astype(np.int16)
    _store(tmp_path / "f.zarr", x, HistogramCodec(), chunks=(2, 2, 8, 8), shards=(2, 4, 8, 8))
    code = (
        "import sys, numpy as np, zarr\n"
        "assert 'stemdask' not in sys.modules\n"
        "z = zarr.open_array(sys.argv[1], mode='r')\n"
        "np.save(sys.argv[2], z[...])\n"
        "print(type(z.metadata.codecs[0].codecs[0]).__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "f.zarr"), str(tmp_path / "f.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stemdask.codecs.histogram"
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), x)


def test_encode_and_decode_on_a_local_cluster(tmp_path, rng, local_client):
    import dask.array as da

    x = rng.poisson(0.6, size=(8, 6, 8, 8)).astype(np.uint16)
    z = zarr.create_array(
        str(tmp_path / "c.zarr"),
        shape=x.shape,
        chunks=(4, 3, 8, 8),
        dtype=x.dtype,
        serializer=HistogramCodec(),
        compressors=None,
    )
    da.from_array(x, chunks=(4, 3, 8, 8)).store(z, lock=False, compute=True)  # encoded on the workers
    back = da.from_zarr(str(tmp_path / "c.zarr"))
    total = local_client.compute(back.astype(np.int64).sum(axis=(2, 3))).result()  # decoded on the workers
    np.testing.assert_array_equal(total, x.astype(np.int64).sum(axis=(2, 3)))
    np.testing.assert_array_equal(local_client.compute(back).result(), x)


def test_cli_convert_real_merlin_file_with_histogram_codec(tmp_path, shared_data, capsys):
    import stemdask
    from stemdask.cli import main

    source = shared_data / "merlin" / "001_4x2_6bit.mib"
    assert main(["convert", str(source), str(tmp_path / "m.zarr"), "--codec", "histogram", "--quiet"]) == 0
    assert "histogram" in capsys.readouterr().out
    original = stemdask.open_dataset(str(source))
    back = stemdask.open_dataset(str(tmp_path / "m.zarr"))
    np.testing.assert_array_equal(np.asarray(back.values), np.asarray(original.values))
    metadata = [p.read_text() for p in (tmp_path / "m.zarr").rglob("zarr.json")]
    assert any(CODEC_NAME in text for text in metadata)
