"""Lossless per-pixel-histogram entropy codec for zarr v3 (``stemdask.histogram``).

In 4D-STEM the count statistics of a detector pixel depend on where it sits
(bright-field disc or dark field), so one histogram per detector pixel over the
chunk's frames, coded with a range coder, beats general-purpose compressors
on counted data.  A chunk of shape ``(..., k_y, k_x)`` is seen as
``frames x pixels``: the last two axes are the detector (one axis for 1-D
arrays), all leading axes are frames.

Format (versions 1 and 2; every integer little-endian)::

    offset  size     field
    0       4        magic b"SDHC"
    4       1        format version (1 or 2)
    5       1        mode: 0 = self-contained, 1 = shared model
    6       1        dtype code: 1 u1, 2 u2, 3 u4, 4 i1, 5 i2, 6 i4
    7       1        ndim
    8       4*ndim   chunk shape (uint32 each)
    .       8        base (int64): symbol s codes the value base + s, 0 <= s < K
    .       8        emin (int64): an escaped value v is coded as v - emin
    .       4        K (uint32): number of direct symbols; symbol K is the escape
    .       4        model fingerprint (uint32; 0 in self-contained mode)
    .       n        range-coded payload (see stemdask.codecs._histogram_kernels)
    end-4   4        CRC-32 (zlib) of every byte before it

Version 2 (written by default) codes the frames of a sparse pixel (at most
a third of its frames outside bin 0) by its non-zero frames: the gap before
each and its bin, so decoding costs in proportion to the non-zero values;
version 1 (still read, and written with ``format_version=1``) codes every
frame.  Shared-model chunks are coded the same way in both versions.

Self-contained mode (the default) stores each pixel's histogram inside the
chunk, so parallel writers never coordinate.  Shared mode (``model=``, for
chunks of few frames) codes every chunk with fixed per-pixel frequencies
learnt once by :meth:`HistogramModel.fit` and stored in the array metadata.

Supported dtypes: uint8, uint16, uint32, int8, int16, int32 (any byte order).
Every value is coded exactly: values outside ``[base, base + K)`` go through
the escape symbol.  Other dtypes (floats, 64-bit integers, bool) are refused
when the array is created.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

from ..errors import FileFormatError, InvalidArgumentError, bad_type, bad_value
from . import _histogram_kernels as _k

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

    from ..events.block import EventBlock

CODEC_NAME = "stemdask.histogram"
MAGIC = b"SDHC"
FORMAT_VERSION = 2
#: every format version this module reads (and can write)
FORMAT_VERSIONS = (1, 2)
MODE_LOCAL = 0
MODE_SHARED = 1
#: most frames one chunk may hold (the decrementing-count coder's total)
MAX_FRAMES = 1 << 24
DEFAULT_MAX_SYMBOLS = 256
#: bounds the coder's working memory (2 x detector width x (K + 1) int64 neighbour counts)
MAX_SYMBOLS_LIMIT = 1 << 12

_DTYPE_CODES = {"u1": 1, "u2": 2, "u4": 3, "i1": 4, "i2": 5, "i4": 6}
_CODE_DTYPES = {v: np.dtype(k) for k, v in _DTYPE_CODES.items()}
SUPPORTED_DTYPES = tuple(np.dtype(k).name for k in _DTYPE_CODES)


class ChunkCorruptError(FileFormatError):
    """A chunk of the histogram codec is corrupted, truncated or of another format."""


def _native(dtype: Any) -> np.dtype:
    return np.dtype(dtype).newbyteorder("=")


def check_dtype(dtype: Any, *, name: str = "dtype") -> np.dtype:
    """Return the native-order dtype, or raise if the codec cannot code it."""
    dt = _native(dtype)
    key = f"{dt.kind}{dt.itemsize}"
    if key not in _DTYPE_CODES:
        raise bad_value(
            name, str(np.dtype(dtype)), f"an integer dtype the histogram codec supports: {', '.join(SUPPORTED_DTYPES)}"
        )
    return dt


def _unsigned_view(arr: np.ndarray, dt: np.dtype, n: int, pixels: int) -> tuple[np.ndarray, int, int]:
    """(native unsigned view (frames, pixels), sign flip, bias) for the kernels.

    Signed values are biased to unsigned by flipping the sign bit, so that
    the kernels are compiled for three unsigned widths only:
    biased = value + bias.
    """
    native = np.ascontiguousarray(arr, dtype=dt).reshape(n, pixels)
    flip = (1 << (8 * dt.itemsize - 1)) if dt.kind == "i" else 0
    return native.view(f"u{dt.itemsize}"), flip, flip


def _detector(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(frames, detector rows, detector columns) of a chunk shape."""
    if len(shape) == 0:
        return 1, 1, 1
    if len(shape) == 1:
        return 1, 1, int(shape[0])
    return int(np.prod(shape[:-2], dtype=np.int64)), int(shape[-2]), int(shape[-1])


# -- shared model ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HistogramModel:
    """Per-pixel symbol frequencies shared by all chunks of an array.

    Build one with :meth:`fit` from representative frames; pass it as
    ``HistogramCodec(model=...)``.  It is stored in the array's metadata
    (zlib-compressed, base64), so the store stays self-describing.

    Attributes
    ----------
    detector_shape : (int, int)
        (k_y, k_x) of the frames it was fitted on; chunks must match.
    offset : int
        Symbol ``s`` stands for the value ``offset + s``.
    frequencies : ndarray of uint16, shape (k_y * k_x, K + 1)
        Frequency of each symbol (the last one is the escape), all >= 1.
    """

    detector_shape: tuple[int, int]
    offset: int
    frequencies: np.ndarray

    def __post_init__(self) -> None:
        f = np.ascontiguousarray(self.frequencies, dtype=np.uint16)
        ny, nx = (int(v) for v in self.detector_shape)
        if f.ndim != 2 or f.shape[0] != ny * nx or f.shape[1] < 2 or f.shape[1] > MAX_SYMBOLS_LIMIT + 1:
            raise bad_value("frequencies", f.shape, f"shape ({ny * nx}, K + 1) with 1 <= K <= {MAX_SYMBOLS_LIMIT}")
        if f.size and f.min() < 1:
            raise bad_value("frequencies", int(f.min()), "every frequency >= 1 (no symbol may be impossible)")
        object.__setattr__(self, "frequencies", f)
        object.__setattr__(self, "detector_shape", (ny, nx))
        object.__setattr__(self, "offset", int(self.offset))
        cum = np.zeros((f.shape[0], f.shape[1] + 1), dtype=np.int64)
        np.cumsum(f, axis=1, out=cum[:, 1:])
        object.__setattr__(self, "_cumtab", cum)

    @property
    def n_symbols(self) -> int:
        """K: the number of direct symbols (the escape is symbol K)."""
        return self.frequencies.shape[1] - 1

    @property
    def fingerprint(self) -> int:
        """CRC-32 of the model, written into every chunk coded with it."""
        head = struct.pack("<qII", self.offset, *self.detector_shape)
        return zlib.crc32(self.frequencies.astype("<u2").tobytes(), zlib.crc32(head))

    @classmethod
    def fit(cls, frames: Any, *, max_symbols: int = DEFAULT_MAX_SYMBOLS) -> HistogramModel:
        """Learn per-pixel frequencies from ``frames`` (shape ``(..., k_y, k_x)``).

        Each pixel's histogram over the frames, plus one pseudo-count spread
        over all symbols (so that values never seen still code exactly), is
        scaled to a total of about 2**16 with every frequency >= 1.
        """
        arr = np.asarray(frames)
        dt = check_dtype(arr.dtype, name="frames.dtype")
        if arr.ndim < 2 or arr.size == 0:
            raise bad_value("frames.shape", arr.shape, "a non-empty array (..., k_y, k_x)")
        k = _check_max_symbols(max_symbols)
        n, ny, nx = _detector(arr.shape)
        offset = int(arr.min())
        kk = min(int(arr.max()) - offset + 1, k)
        raw, flip, bias = _unsigned_view(arr, dt, n, ny * nx)
        # one pseudo-count per pixel, spread over all symbols, so unseen values stay codable
        hist = _k.pixel_histograms(raw, np.int64(flip), np.int64(kk), np.int64(offset + bias))
        hist = hist.astype(np.float64) + 1.0 / (kk + 1)
        scaled = np.maximum(1, np.round(hist * (65535.0 / hist.sum(axis=1, keepdims=True))))
        return cls((ny, nx), offset, scaled.astype(np.uint16))

    def to_json(self) -> dict[str, Any]:
        raw = self.frequencies.astype("<u2").tobytes()
        return {
            "detector_shape": list(self.detector_shape),
            "offset": self.offset,
            "n_symbols": self.n_symbols,
            "frequencies": base64.b64encode(zlib.compress(raw, 9)).decode("ascii"),
            "crc32": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: Any) -> HistogramModel:
        if not isinstance(data, dict):
            raise bad_type("model", data, "a dict written by HistogramModel.to_json")
        try:
            ny, nx = (int(v) for v in data["detector_shape"])
            k = int(data["n_symbols"])
            raw = zlib.decompress(base64.b64decode(data["frequencies"]))
            freq = np.frombuffer(raw, dtype="<u2").reshape(ny * nx, k + 1)
            model = cls((ny, nx), int(data["offset"]), freq)
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise InvalidArgumentError(f"model={str(data)[:80]!r} is invalid: not a HistogramModel ({exc})") from None
        if model.fingerprint != int(data["crc32"]):
            raise InvalidArgumentError("model is invalid: its CRC-32 does not match its frequencies")
        return model


def _check_max_symbols(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise bad_type("max_symbols", value, "an integer")
    if not 1 <= int(value) <= MAX_SYMBOLS_LIMIT:
        raise bad_value("max_symbols", value, f"an integer in [1, {MAX_SYMBOLS_LIMIT}]")
    return int(value)


# -- chunk coding (no zarr needed) -------------------------------------------


def encode_chunk(
    array: Any,
    *,
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    model: HistogramModel | None = None,
    format_version: int = FORMAT_VERSION,
) -> bytes:
    """Code one chunk (an integer array; last two axes are the detector) to bytes.

    ``format_version`` 1 writes the chunks older stemdask versions read.
    """
    arr = np.asarray(array)
    version = _check_version(format_version)
    dt = check_dtype(arr.dtype, name="array.dtype")
    k_max = _check_max_symbols(max_symbols)
    if arr.ndim > 255 or any(s >= 2**32 for s in arr.shape):
        raise bad_value("array.shape", arr.shape, "at most 255 axes, each shorter than 2**32")
    n, ny, nx = _detector(arr.shape)
    if n > MAX_FRAMES:
        raise bad_value("chunk frames", n, f"at most {MAX_FRAMES} frames per chunk (use smaller scan tiles)")
    if arr.size:
        vmin, vmax = int(arr.min()), int(arr.max())
    else:
        vmin = vmax = 0
    if model is None:
        mode, base, emin, fingerprint = MODE_LOCAL, vmin, vmin, 0
        k = min(vmax - vmin + 1, k_max)
    else:
        if (ny, nx) != model.detector_shape:
            raise bad_value("chunk detector shape", (ny, nx), f"the model's {model.detector_shape}")
        mode, base, emin, fingerprint = MODE_SHARED, model.offset, vmin, model.fingerprint
        k = model.n_symbols
    header = _pack_header(version, mode, dt, arr.shape, base, emin, k, fingerprint)
    raw, flip, bias = _unsigned_view(arr, dt, n, ny * nx)
    cap = arr.nbytes // 2 + 12 * n + 16 * (k + 2) + 1024
    while True:
        out = np.empty(cap, dtype=np.uint8)
        # the symbol range and the output buffer are the same for every kernel
        tail = (np.int64(k), np.int64(base + bias), np.int64(emin + bias), out)
        if mode == MODE_LOCAL:
            size = _k.encode_local(
                raw, np.int64(flip), np.int64(ny), np.int64(nx), *tail, _k.GAP_CUM, _k.GAP_COUNT, version >= 2
            )
        else:
            size = _k.encode_shared(raw, np.int64(flip), model._cumtab, *tail)  # type: ignore[union-attr]
        if size >= 0:
            break
        cap *= 2
    body = header + out[:size].tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def _check_version(value: Any) -> int:
    if isinstance(value, bool) or value not in FORMAT_VERSIONS:
        raise bad_value("format_version", value, f"one of {FORMAT_VERSIONS}")
    return int(value)


def _pack_header(
    version: int, mode: int, dt: np.dtype, shape: tuple[int, ...], base: int, emin: int, k: int, fingerprint: int
) -> bytes:
    code = _DTYPE_CODES[f"{dt.kind}{dt.itemsize}"]
    return (
        MAGIC
        + struct.pack("<BBBB", version, mode, code, len(shape))
        + struct.pack(f"<{len(shape)}I", *shape)
        + struct.pack("<qqII", base, emin, k, fingerprint)
    )


def read_header(data: bytes | memoryview | np.ndarray) -> dict[str, Any]:
    """Parse and check a chunk's header and checksum.

    Raises
    ------
    ChunkCorruptError
        On a wrong magic, an unknown format version, a truncated chunk or a
        checksum mismatch.
    """
    buf = memoryview(data).cast("B")  # type: ignore[arg-type]
    size = len(buf)
    if size < 12 or bytes(buf[:4]) != MAGIC:
        raise ChunkCorruptError(
            f"not a stemdask.histogram chunk: {size} bytes starting {bytes(buf[:4])!r}, expected the magic {MAGIC!r}"
        )
    version, mode, code, ndim = struct.unpack_from("<BBBB", buf, 4)
    if version not in FORMAT_VERSIONS:
        raise ChunkCorruptError(
            f"stemdask.histogram chunk has format version {version}; this stemdask "
            f"reads versions {', '.join(map(str, FORMAT_VERSIONS))} (upgrade stemdask?)"
        )
    head = 8 + 4 * ndim + 24
    if size < head + 5 + 4:
        raise ChunkCorruptError(f"stemdask.histogram chunk truncated: {size} bytes, header needs {head + 9}")
    (crc,) = struct.unpack_from("<I", buf, size - 4)
    if zlib.crc32(buf[: size - 4]) != crc:
        raise ChunkCorruptError(f"stemdask.histogram chunk corrupted or truncated: CRC-32 mismatch ({size} bytes)")
    if mode not in (MODE_LOCAL, MODE_SHARED) or code not in _CODE_DTYPES:
        raise ChunkCorruptError(f"stemdask.histogram chunk has unknown mode {mode} or dtype code {code}")
    shape = struct.unpack_from(f"<{ndim}I", buf, 8)
    base, emin, k, fingerprint = struct.unpack_from("<qqII", buf, 8 + 4 * ndim)
    return {
        "version": version,
        "mode": mode,
        "dtype": _CODE_DTYPES[code],
        "shape": tuple(shape),
        "base": base,
        "emin": emin,
        "n_symbols": k,
        "fingerprint": fingerprint,
        "payload": buf[head : size - 4],
    }


def decode_chunk(
    data: bytes | memoryview | np.ndarray,
    *,
    model: HistogramModel | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
) -> np.ndarray:
    """Decode bytes written by :func:`encode_chunk` (checking shape/dtype if given)."""
    h = _checked_header(data, shape, dtype)
    dt = h["dtype"]
    n, ny, nx = _detector(h["shape"])
    # filled with the chunk's minimum (bin 0) once: the decoder writes only the other values of sparse pixels
    result = np.zeros((n, ny * nx), dtype=dt) if h["base"] == 0 else np.full((n, ny * nx), h["base"], dtype=dt)
    out = result.view(f"u{dt.itemsize}")
    if h["mode"] == MODE_LOCAL:
        status = _decode_local(h, out, events=None)
    else:
        status = _decode_shared(h, out, model)
    if status != 0:
        raise _inconsistent()
    return result.reshape(h["shape"])


def _biased(h: dict[str, Any]) -> tuple[np.int64, ...]:
    """(flip, K, base, emin, vmin, vmax) of a chunk header as the kernels take them (biased values)."""
    dt = h["dtype"]
    bits = 8 * dt.itemsize
    flip = (1 << (bits - 1)) if dt.kind == "i" else 0  # also the bias of signed values
    return tuple(np.int64(v) for v in (flip, h["n_symbols"], h["base"] + flip, h["emin"] + flip, 0, (1 << bits) - 1))


def _decode_local(h: dict[str, Any], out: np.ndarray, events: tuple[np.ndarray, ...] | None) -> int:
    """Run the self-contained decoder (either format version) on a checked chunk: into ``out`` or to events."""
    n, ny, nx = _detector(h["shape"])
    flip, k, base, emin, vmin, vmax = _biased(h)
    payload = np.frombuffer(h["payload"], dtype=np.uint8)
    return int(
        _k.decode_local(
            payload,
            out,
            np.int64(n),
            np.int64(ny * nx),
            flip,
            np.int64(nx),
            k,
            base,
            emin,
            vmin,
            vmax,
            _k.GAP_CUM,
            _k.GAP_COUNT,
            _k.GAP_START,
            h["version"] >= 2,
            events is not None,
            *(events if events is not None else _NO_EVENTS),
        )
    )


def _decode_shared(h: dict[str, Any], out: np.ndarray, model: HistogramModel | None) -> int:
    """Run the shared-model decoder on a checked chunk, after checking that ``model`` is the one it was coded with."""
    _, ny, nx = _detector(h["shape"])
    k, base = h["n_symbols"], h["base"]
    if model is None:
        raise ChunkCorruptError(
            "stemdask.histogram chunk was coded with a shared model, but the codec "
            "has none (was the array's metadata edited?)"
        )
    if (
        h["fingerprint"] != model.fingerprint
        or (ny, nx) != model.detector_shape
        or k != model.n_symbols
        or base != model.offset
    ):
        raise ChunkCorruptError(
            "stemdask.histogram chunk was coded with another shared model "
            f"(fingerprint {h['fingerprint']:#010x}, codec's {model.fingerprint:#010x})"
        )
    flip, k64, base64, emin64, vmin, vmax = _biased(h)
    payload = np.frombuffer(h["payload"], dtype=np.uint8)
    return int(
        _k.decode_shared(payload, out, flip, model._cumtab, k64, base64, emin64, vmin, vmax)  # type: ignore[attr-defined]
    )


_NO_EVENTS = (np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64))


def _inconsistent() -> ChunkCorruptError:
    return ChunkCorruptError(
        "stemdask.histogram chunk payload is inconsistent (corrupted data that passed the checksum, or a writer bug)"
    )


def _checked_header(data: bytes | memoryview | np.ndarray, shape: tuple[int, ...] | None, dtype: Any) -> dict[str, Any]:
    """:func:`read_header`, plus the checks of shape, dtype and value range every decoder needs."""
    h = read_header(data)
    dt = h["dtype"]
    if shape is not None and tuple(shape) != h["shape"]:
        raise ChunkCorruptError(f"stemdask.histogram chunk has shape {h['shape']}, expected {tuple(shape)}")
    if dtype is not None and _native(dtype) != dt:
        raise ChunkCorruptError(f"stemdask.histogram chunk has dtype {dt}, expected {_native(dtype)}")
    info = np.iinfo(dt)
    k, base, emin = h["n_symbols"], h["base"], h["emin"]
    if not (
        1 <= k <= MAX_SYMBOLS_LIMIT and info.min <= base and base + k - 1 <= info.max and info.min <= emin <= info.max
    ):
        raise ChunkCorruptError(f"stemdask.histogram chunk header inconsistent: base={base}, emin={emin}, K={k}")
    n, _, _ = _detector(h["shape"])
    if n > MAX_FRAMES:
        raise ChunkCorruptError(f"stemdask.histogram chunk header claims {n} frames (> {MAX_FRAMES})")
    return h


def decode_chunk_events(
    data: bytes | memoryview | np.ndarray,
    *,
    model: HistogramModel | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
) -> EventBlock:
    """Decode a chunk of counts of shape ``(scan_y, scan_x, k_y, k_x)`` into an :class:`EventBlock`.

    A self-contained chunk whose minimum is 0 (counted data) goes straight to
    events: the dense chunk never exists, and a version-2 chunk costs time and
    memory in proportion to its non-zero values (a version-1 chunk codes
    every frame, so decoding it still visits every frame).  A chunk coded
    with a shared model, or whose minimum is above 0, is decoded dense and
    converted; the result is the same.

    Raises
    ------
    InvalidArgumentError
        For a chunk that is not 4-D or holds negative values (not counts).
    """
    from ..events.block import EventBlock, index_dtype

    h = _checked_header(data, shape, dtype)
    if len(h["shape"]) != 4:
        raise bad_value("chunk shape", h["shape"], "4 axes (scan_y, scan_x, k_y, k_x) to decode into events")
    if h["base"] < 0:
        raise bad_value("chunk minimum", h["base"], "counts >= 0 to decode into events")
    dt = h["dtype"]
    if h["mode"] != MODE_LOCAL or h["base"] != 0:
        dense = decode_chunk(data, model=model)
        return EventBlock.from_dense(dense, dtype=dt)
    sy, sx, ny, nx = h["shape"]
    n, pixels = sy * sx, ny * nx
    # (frame, pixel) of every electron, pixel-major, then sorted into frames (CSR); room for
    # 1 e-/px (np.empty: only the pages written are touched), retried larger when more
    cap = max(n * pixels, 8 * len(h["payload"])) + 1024
    unused = np.empty((1, 1), dtype=f"u{dt.itemsize}")
    while True:
        ev = (np.empty(cap, np.int32), np.empty(cap, np.int32), np.zeros(n, np.int64))
        status = _decode_local(h, unused, events=ev)
        if status != _k.NEED_SPACE:
            break
        cap *= 2
    if status < 0:
        raise _inconsistent()
    indices = np.empty(status, dtype=index_dtype(pixels))
    offsets = _k.scatter_events(ev[0], ev[1], ev[2], np.int64(status), indices)
    return EventBlock(indices, offsets, (sy, sx), (ny, nx), dtype=dt, check=False)


# -- the zarr v3 codec ---------------------------------------------------------


@dataclass(frozen=True)
class HistogramCodec(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec: per-pixel histograms + range coding, lossless.

    Parameters
    ----------
    max_symbols : int
        At most this many distinct values per chunk get their own histogram
        bin (values ``min .. min + max_symbols - 1``); larger values are coded
        exactly through an escape.  256 suits counted data.
    model : HistogramModel or dict, optional
        A model shared by all chunks (see :meth:`HistogramModel.fit`), for
        chunks of few frames whose own histograms would cost too much.
    format_version : int
        Chunk format written (every version is read): 2, or 1 for stores
        that older stemdask versions must read.  A store's metadata keeps the
        version it was created with, so writing into an old store stays
        readable by the stemdask that made it.

    Examples
    --------
    >>> import zarr, numpy as np
    >>> z = zarr.create_array({}, shape=(4, 8, 8), chunks=(4, 8, 8), dtype="uint16",
    ...                       serializer=HistogramCodec(), compressors=None)
    >>> z[:] = np.arange(256, dtype="uint16").reshape(4, 8, 8) % 3
    >>> int(z[:].sum())
    255
    """

    is_fixed_size = False

    max_symbols: int
    model: HistogramModel | None
    format_version: int

    def __init__(
        self,
        *,
        max_symbols: int = DEFAULT_MAX_SYMBOLS,
        model: HistogramModel | dict | None = None,
        format_version: int = FORMAT_VERSION,
    ) -> None:
        object.__setattr__(self, "max_symbols", _check_max_symbols(max_symbols))
        object.__setattr__(self, "format_version", _check_version(format_version))
        if isinstance(model, dict):
            model = HistogramModel.from_json(model)
        elif model is not None and not isinstance(model, HistogramModel):
            raise bad_type("model", model, "a HistogramModel, its to_json() dict, or None")
        object.__setattr__(self, "model", model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict) or data.get("name") != CODEC_NAME:
            raise bad_value("codec metadata", data, f"a dict with name {CODEC_NAME!r}")
        config = dict(data.get("configuration") or {})
        unknown = set(config) - {"max_symbols", "model", "format_version"}
        if unknown:
            raise bad_value("codec configuration", sorted(unknown), "only max_symbols, model, format_version")
        # metadata without a version was written by version 1
        version = config.pop("format_version", 1)
        if version not in FORMAT_VERSIONS:
            raise bad_value(
                "format_version", version, f"one of {FORMAT_VERSIONS} (upgrade stemdask to read this store)"
            )
        return cls(**config, format_version=version)

    def to_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"max_symbols": self.max_symbols, "format_version": self.format_version}
        if self.model is not None:
            config["model"] = self.model.to_json()
        return {"name": CODEC_NAME, "configuration": config}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HistogramCodec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.max_symbols, self.format_version, None if self.model is None else self.model.fingerprint))

    def _check_spec(self, shape: tuple[int, ...], dtype: Any) -> None:
        native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
        check_dtype(native, name="dtype")
        n, ny, nx = _detector(tuple(shape))
        if n > MAX_FRAMES:
            raise bad_value("chunk frames", n, f"at most {MAX_FRAMES} frames per chunk")
        if self.model is not None and (ny, nx) != self.model.detector_shape:
            raise bad_value("chunk detector shape", (ny, nx), f"the model's {self.model.detector_shape}")

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        chunk_shape = getattr(chunk_grid, "chunk_shape", shape)
        self._check_spec(tuple(chunk_shape), dtype)

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        # also reached for the inner codecs of a sharding codec, where validate() is not
        self._check_spec(array_spec.shape, array_spec.dtype)
        return self

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = encode_chunk(
            chunk_array.as_numpy_array(),
            max_symbols=self.max_symbols,
            model=self.model,
            format_version=self.format_version,
        )
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        native = chunk_spec.dtype.to_native_dtype()
        arr = decode_chunk(chunk_bytes.as_numpy_array(), model=self.model, shape=chunk_spec.shape, dtype=native)
        if arr.dtype != native:  # a non-native byte order was asked for
            arr = arr.astype(native)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("stemdask.histogram chunks have a data-dependent size")


register_codec(CODEC_NAME, HistogramCodec)
