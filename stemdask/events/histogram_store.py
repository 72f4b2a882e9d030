"""Histogram-coded dense stores opened as electron events, chunk by chunk, never dense.

A ``"dense"`` store whose 4-D array is coded with :class:`~stemdask.codecs.histogram.HistogramCodec`
holds, in each inner chunk, the per-pixel histograms and the coded frames of
a tile of scan positions. :func:`~stemdask.codecs.histogram.decode_chunk_events`
turns one such chunk straight into an :class:`~stemdask.events.block.EventBlock`
in time and memory proportional to its non-zero values. This module reads the
raw bytes of the inner chunks a dask block needs (through the zarr store's
own byte-range reads and the array's own bytes-to-bytes codecs, e.g. the
crc32c every stemdask chunk carries) and decodes them that way, so that
``stemdask.open_dataset(store, representation="events")`` gives the same
counted dataset as an event store would, lazily.

Where the inner chunks sit is the zarr v3 sharding format (a shard file is
its inner chunks followed, or preceded, by an index of ``(offset, nbytes)``
uint64 pairs per inner chunk in C order, ``2**64 - 1`` for an empty chunk,
coded by the index codecs ``bytes`` and optionally ``crc32c``), read from the
array's metadata; unsharded arrays store one inner chunk per key.  Arrays
coded otherwise (another serializer, an array-to-array codec, a codec on the
whole shard, an index codec of variable size) are not claimed here; they are
opened dense and converted block by block.

Registered with :mod:`stemdask.io.layouts` as the ``"events"`` reader of
the ``"dense"`` layout.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import UInt64
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

from ..codecs.histogram import HistogramCodec, decode_chunk_events
from ..errors import CorruptChunkError, FileFormatError, InvalidArgumentError
from ..io.checked import chunk_file, chunks_in
from ..io.layouts import StoreReader, get_layout, register_store_reader
from ..io.zarr_store import LAYOUT as DENSE_LAYOUT
from ..worker_memory import keep_freed_memory
from .array import event_meta, wrap_events
from .block import EventBlock, concatenate_blocks
from .choose import choose_representation

#: an empty inner chunk in a shard index (both offset and length)
_EMPTY = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class HistogramCoding:
    """How the inner chunks of a histogram-coded array are stored (from its metadata).

    Attributes
    ----------
    chunk_shape : tuple of int
        Shape of one inner chunk (what one histogram chunk codes).
    shard_shape : tuple of int or None
        Shape of one shard (one key), or None for an unsharded array.
    codec : HistogramCodec
        The array's serializer.
    chunk_codecs : tuple of BytesBytesCodec
        Bytes-to-bytes codecs after the serializer (decoded in reverse).
    index_codecs : tuple of BytesBytesCodec
        Bytes-to-bytes codecs of the shard index (only crc32c: fixed size).
    index_endian : str
        Byte order of the shard index (``"<"`` or ``">"``).
    index_at_end : bool
        Whether the shard index follows the chunks (zarr's default).
    """

    chunk_shape: tuple[int, ...]
    shard_shape: tuple[int, ...] | None
    codec: HistogramCodec
    chunk_codecs: tuple[BytesBytesCodec, ...]
    index_codecs: tuple[BytesBytesCodec, ...] = ()
    index_endian: str = "<"
    index_at_end: bool = True

    @property
    def per_shard(self) -> tuple[int, ...]:
        """Inner chunks per shard along each axis."""
        shard = self.shard_shape or self.chunk_shape
        return tuple(s // c for s, c in zip(shard, self.chunk_shape))

    @property
    def index_nbytes(self) -> int:
        """Bytes of one shard index (16 per inner chunk, 4 per crc32c)."""
        return 16 * int(np.prod(self.per_shard)) + 4 * len(self.index_codecs)


def histogram_coding(array: zarr.Array) -> HistogramCoding | None:
    """The storage of ``array``'s inner chunks when they decode to events, else None.

    Only arrays whose chunks are coded by the histogram codec directly (no
    array-to-array codec before it), followed by bytes-to-bytes codecs, inside
    a sharding codec at most, qualify.
    """
    if not isinstance(array.metadata, ArrayV3Metadata):
        return None
    codecs = tuple(array.metadata.codecs)
    shard_shape = None
    index: tuple[Any, ...] = ()
    at_end = True
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sharding = codecs[0]
        shard_shape = tuple(int(s) for s in array.shards or ())
        index = tuple(sharding.index_codecs)
        at_end = sharding.index_location == ShardingCodecIndexLocation.end
        codecs = tuple(sharding.codecs)
        if not (
            index
            and isinstance(index[0], BytesCodec)
            and all(isinstance(c, Crc32cCodec) for c in index[1:])
            and len(shard_shape) == array.ndim
        ):
            return None
    if not codecs or not isinstance(codecs[0], HistogramCodec):
        return None
    after = tuple(c for c in codecs[1:] if isinstance(c, BytesBytesCodec))
    if len(after) != len(codecs) - 1:
        return None
    endian = "<"
    if index:
        endian = ">" if getattr(getattr(index[0], "endian", None), "value", "little") == "big" else "<"
    return HistogramCoding(
        chunk_shape=tuple(int(c) for c in array.chunks),
        shard_shape=shard_shape,
        codec=codecs[0],
        chunk_codecs=after,
        index_codecs=tuple(index[1:]),
        index_endian=endian,
        index_at_end=at_end,
    )


async def _decode_bytes(codecs: tuple[BytesBytesCodec, ...], bufs: list[Any], spec: ArraySpec) -> list[Any]:
    """``bufs`` through the bytes-to-bytes ``codecs`` in reverse (what zarr's pipeline does)."""
    for codec in reversed(codecs):
        bufs = list(await codec.decode([(b, spec) for b in bufs]))
    return bufs


@dataclass
class HistogramEventSource:
    """Reads scan tiles of a histogram-coded array as :class:`EventBlock` s.

    Picklable (holds the store, the array path and the coding; the zarr array
    is opened once per process on first read).
    """

    store: Any
    path: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    coding: HistogramCoding
    _array: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def array(self) -> zarr.Array:
        if self._array is None:
            self._array = zarr.open_array(self.store, path=self.path, mode="r", zarr_format=3)
        return self._array

    def _spec(self, shape: tuple[int, ...], dtype: Any) -> ArraySpec:
        return ArraySpec(
            shape=shape,
            dtype=dtype,
            fill_value=self.array().metadata.fill_value,
            config=ArrayConfig(order="C", write_empty_chunks=False),
            prototype=default_buffer_prototype(),
        )

    async def _chunk_bytes(self, chunks: list[tuple[int, ...]]) -> list[np.ndarray | None]:
        """Raw histogram bytes of ``chunks`` (inner-chunk indices), None for an empty chunk."""
        array, coding = self.array(), self.coding
        store, proto = array.store, default_buffer_prototype()
        keys = [chunk_file(array, c) for c in chunks]
        if coding.shard_shape is None:
            raw = await asyncio.gather(*(store.get(k, prototype=proto) for k in keys))
        else:
            raw = await self._from_shards(chunks, keys)
        present = [i for i, b in enumerate(raw) if b is not None]
        decoded = await _decode_bytes(
            coding.chunk_codecs, [raw[i] for i in present], self._spec(coding.chunk_shape, array.metadata.dtype)
        )
        out: list[np.ndarray | None] = [None] * len(chunks)
        for i, buf in zip(present, decoded):
            out[i] = buf.as_numpy_array()
        return out

    async def _from_shards(self, chunks: list[tuple[int, ...]], keys: list[str]) -> list[Any]:
        """Byte ranges of ``chunks`` inside their shards, after reading each shard's index once."""
        array, coding = self.array(), self.coding
        store, proto = array.store, default_buffer_prototype()
        shard_keys = sorted(set(keys))
        size = coding.index_nbytes
        request = SuffixByteRequest(size) if coding.index_at_end else RangeByteRequest(0, size)
        found = await asyncio.gather(*(store.get(k, prototype=proto, byte_range=request) for k in shard_keys))
        present = [k for k, b in zip(shard_keys, found) if b is not None]
        index_spec = self._spec((*coding.per_shard, 2), UInt64(endianness="little"))
        bufs = await _decode_bytes(coding.index_codecs, [b for b in found if b is not None], index_spec)
        indexes = {}
        for key, buf in zip(present, bufs):
            raw = buf.as_numpy_array()
            if raw.size != 16 * int(np.prod(coding.per_shard)):
                raise FileFormatError(f"shard {key!r}: index of {raw.size} bytes, expected {coding.index_nbytes}")
            indexes[key] = np.frombuffer(raw.tobytes(), dtype=f"{coding.index_endian}u8").reshape(*coding.per_shard, 2)
        ranges: list[tuple[str, int, int] | None] = []
        for chunk, key in zip(chunks, keys):
            table = indexes.get(key)
            if table is None:
                ranges.append(None)
                continue
            start, nbytes = table[tuple(i % p for i, p in zip(chunk, coding.per_shard))]
            ranges.append(None if start == _EMPTY and nbytes == _EMPTY else (key, int(start), int(nbytes)))
        return await asyncio.gather(
            *(
                _none()
                if r is None
                else store.get(r[0], prototype=proto, byte_range=RangeByteRequest(r[1], r[1] + r[2]))
                for r in ranges
            )
        )

    def block(self, y0: int, y1: int, x0: int, x1: int) -> EventBlock:
        """Electron events of scan rows ``y0:y1``, columns ``x0:x1`` (whole frames)."""
        array = self.array()
        region = (slice(y0, y1), slice(x0, x1), slice(None), slice(None))
        chunks = chunks_in(array, region)
        try:
            raw = sync(self._chunk_bytes(chunks))
        except (MemoryError, KeyboardInterrupt, OSError):
            raise
        except FileFormatError:
            raise
        except Exception as err:
            raise CorruptChunkError(
                f"store {str(self.store)!r}, array {self.path!r}: cannot read the inner chunks {chunks[:8]} "
                f"of scan rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}: {type(err).__name__}: {err}"
            ) from err
        cy, cx = self.coding.chunk_shape[:2]
        ky, kx = self.shape[2:]
        rows: dict[int, list[EventBlock]] = {}
        for chunk, data in zip(chunks, raw):
            block = self._decode(chunk, data)
            # the part of the (full-size, possibly edge-padded) chunk inside the tile
            iy, ix = chunk[0] * cy, chunk[1] * cx
            part = block[max(y0, iy) - iy : min(y1, iy + cy) - iy, max(x0, ix) - ix : min(x1, ix + cx) - ix]
            rows.setdefault(chunk[0], []).append(part)
        strips = [concatenate_blocks(rows[r], axis=1) for r in sorted(rows)]
        out = concatenate_blocks(strips, axis=0)
        if out.scan_shape != (y1 - y0, x1 - x0) or out.frame_shape != (ky, kx):
            raise FileFormatError(
                f"store {str(self.store)!r}, array {self.path!r}: scan rows {y0}..{y1 - 1}, columns "
                f"{x0}..{x1 - 1} decoded to events of shape {out.shape}"
            )
        return out

    def _decode(self, chunk: tuple[int, ...], data: Any) -> EventBlock:
        """One inner chunk's events (the fill value's for a chunk never written)."""
        shape = self.coding.chunk_shape
        if data is None:
            fill = self.array().metadata.fill_value
            frames = np.full(shape, fill, dtype=self.dtype)
            return EventBlock.from_dense(frames, dtype=self.dtype)
        try:
            return decode_chunk_events(data, model=self.coding.codec.model, shape=shape, dtype=self.dtype)
        except InvalidArgumentError as err:
            raise InvalidArgumentError(
                f"store {str(self.store)!r}, array {self.path!r}, chunk {chunk}: cannot be electron events: {err}"
            ) from err
        except FileFormatError as err:
            raise CorruptChunkError(
                f"store {str(self.store)!r}, array {self.path!r}: corrupt chunk {chunk} "
                f"(file {chunk_file(self.array(), chunk)!r}): {err}. Run `stemdask verify {self.store}` "
                f"for a full report"
            ) from err


async def _none() -> None:
    return None


def _tile_block(source: HistogramEventSource, y0: int, y1: int, x0: int, x1: int) -> EventBlock:
    keep_freed_memory()  # decoded index arrays are large temporaries (stemdask.worker_memory)
    return source.block(y0, y1, x0, x1)


def _array_of(store: Any, attrs: dict[str, Any]) -> zarr.Array | None:
    name = attrs.get("stemdask_variable", "intensity")
    try:
        node = zarr.open_array(store, path=name, mode="r", zarr_format=3)
    except Exception:  # noqa: BLE001  (not an array of that name: the dense opener says why)
        return None
    return node if node.ndim == 4 else None


def decodes_to_events(store: Any, attrs: dict[str, Any]) -> bool:
    """Whether the dense store's array is histogram-coded counts that decode straight to events."""
    array = _array_of(store, attrs)
    return array is not None and array.dtype.kind in "ui" and histogram_coding(array) is not None


def open_histogram_events(
    store: Any, attrs: dict[str, Any], *, chunks: Any = None, allow_incomplete: bool = False
) -> xr.DataArray:
    """A histogram-coded dense store as a lazy counted dataset (one dask task per scan tile).

    Coordinates, attrs and the scan tiles (``chunks``, default whole inner
    chunks of about 8 MiB of frames) are those the dense opener gives; each
    tile is decoded from its inner chunks straight into an
    :class:`EventBlock`, never dense.

    Raises
    ------
    FileFormatError
        When the store's array is not histogram-coded (ask
        :func:`decodes_to_events` first).
    """
    array = _array_of(store, attrs)
    coding = None if array is None else histogram_coding(array)
    if array is None or coding is None:
        raise FileFormatError(f"store {str(store)!r} holds no histogram-coded 4-D array to decode into events")
    # metadata only: its coords, attrs and tile grid (no chunk is read)
    like = get_layout(DENSE_LAYOUT, store).open(store, attrs, chunks=chunks, allow_incomplete=allow_incomplete)
    dtype = np.dtype(array.dtype)
    shape = tuple(int(s) for s in array.shape)
    source = HistogramEventSource(store, array.path, shape, dtype, coding)  # type: ignore[arg-type]
    ys, xs = (np.cumsum((0,) + tuple(c)) for c in like.data.chunks[:2])
    stamp = None
    if isinstance(store, (str, os.PathLike)) and os.path.exists(os.path.join(store, array.path, "zarr.json")):
        stamp = os.stat(os.path.join(store, array.path, "zarr.json")).st_mtime_ns
    name = "histogram-events-" + dask.base.tokenize(str(store), array.path, shape, like.data.chunks, stamp)
    graph = {
        (name, i, j, 0, 0): (_tile_block, source, int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]))
        for i in range(len(ys) - 1)
        for j in range(len(xs) - 1)
    }
    events = da.Array(
        graph,
        name,
        chunks=(*like.data.chunks[:2], (shape[2],), (shape[3],)),
        dtype=dtype,
        meta=event_meta(shape[2:], dtype),  # type: ignore[arg-type]
    )
    return wrap_events(events, like)


def open_histogram_auto(
    store: Any, attrs: dict[str, Any], *, chunks: Any = None, allow_incomplete: bool = False
) -> xr.DataArray:
    """A histogram-coded dense store in the cheaper representation (``representation="auto"``).

    The sparsity is measured on the first dask block of the store opened
    dense (:func:`stemdask.events.choose_representation`); below the
    crossover the store is opened with :func:`open_histogram_events`, so the
    other blocks decode straight to events, never dense; above it, dense.
    """
    dense = get_layout(DENSE_LAYOUT, store).open(store, attrs, chunks=chunks, allow_incomplete=allow_incomplete)
    if choose_representation(dense) == "dense":
        return dense
    return open_histogram_events(store, attrs, chunks=chunks, allow_incomplete=allow_incomplete)


register_store_reader(
    StoreReader(
        "histogram-events",
        layout=DENSE_LAYOUT,
        representation="events",
        detect=decodes_to_events,
        open=open_histogram_events,
    )
)
register_store_reader(
    StoreReader(
        "histogram-auto",
        layout=DENSE_LAYOUT,
        representation="auto",
        detect=decodes_to_events,
        open=open_histogram_auto,
    )
)

__all__ = [
    "HistogramCoding",
    "HistogramEventSource",
    "decodes_to_events",
    "histogram_coding",
    "open_histogram_auto",
    "open_histogram_events",
]
