"""Codecs for stemdask's zarr v3 stores, and the names ``save(codec=...)`` accepts.

A name resolves to a list of zarr v3 codec objects split by role: an
array-to-bytes ``serializer`` (e.g. the per-pixel histogram coder, which
needs the array's structure) or bytes-to-bytes ``compressors`` (zstd,
blosc, gzip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zarr.codecs
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec

from ..errors import bad_type, bad_value


@dataclass(frozen=True)
class CodecChoice:
    """The zarr codecs a named codec resolves to."""

    serializer: Any = "auto"
    compressors: tuple[Any, ...] = field(default_factory=tuple)
    #: frames a default inner chunk should hold at least (a per-chunk model needs statistics)
    min_chunk_frames: int = 1


#: name -> factory of a CodecChoice; codec modules add their own names here
CODECS: dict[str, Callable[[], CodecChoice]] = {
    "none": lambda: CodecChoice(compressors=()),
    "zstd": lambda: CodecChoice(compressors=(zarr.codecs.ZstdCodec(level=3),)),
    "gzip": lambda: CodecChoice(compressors=(zarr.codecs.GzipCodec(level=6),)),
    "blosc": lambda: CodecChoice(
        compressors=(zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle=zarr.codecs.BloscShuffle.bitshuffle),)
    ),
    # the default: bit-shuffled LZ4 at level 1 encodes ~1 GB/s per core and decodes 1.2-2 GB/s
    # (zstd level 5 above is 1.2-1.6x smaller but encodes only 65-160 MB/s); see docs/storage.md
    "blosc-lz4": lambda: CodecChoice(
        compressors=(zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle=zarr.codecs.BloscShuffle.bitshuffle),)
    ),
    # lossless per-pixel histogram + range coder (imported lazily: it compiles numba kernels)
    # (256+ frames per chunk: with fewer, the per-pixel histograms cost 5-10 % in size)
    "histogram": lambda: CodecChoice(
        serializer=__import__("stemdask.codecs.histogram", fromlist=["HistogramCodec"]).HistogramCodec(),
        compressors=(),
        min_chunk_frames=256,
    ),
}

#: what save() uses when codec=None: a fast general-purpose lossless codec
DEFAULT_CODEC = "blosc-lz4"


def resolve_codec(codec: Any) -> CodecChoice:
    """Turn ``codec`` (a name, a zarr codec object or a list of them) into a CodecChoice.

    Raises
    ------
    InvalidArgumentError
        For an unknown name, listing the known ones.
    """
    if codec is None:
        codec = DEFAULT_CODEC
    if isinstance(codec, str):
        try:
            factory = CODECS[codec]
        except KeyError:
            raise bad_value("codec", codec, f"one of {sorted(CODECS)} or a zarr v3 codec object") from None
        return factory()
    if isinstance(codec, CodecChoice):
        return codec
    items = list(codec) if isinstance(codec, (list, tuple)) else [codec]
    serializer: Any = "auto"
    compressors = []
    for item in items:
        if isinstance(item, ArrayBytesCodec):
            if serializer != "auto":
                raise bad_value("codec", codec, "at most one array-to-bytes codec")
            serializer = item
        elif isinstance(item, BytesBytesCodec):
            compressors.append(item)
        else:
            raise bad_type("codec", item, "a codec name or a zarr v3 ArrayBytesCodec/BytesBytesCodec")
    return CodecChoice(serializer=serializer, compressors=tuple(compressors))


def with_checksum(compressors: Any) -> tuple[Any, ...]:
    """``compressors`` with a crc32c checksum appended (once), for every inner chunk.

    The checksum is the last bytes-to-bytes step, so it covers the compressed
    bytes as stored: a flipped bit or a cut chunk fails on read instead of
    decoding to wrong values (blosc and zstd frames carry no checksum of their
    own by default). The shard index carries its own crc32c already.
    """
    items = tuple(compressors or ())
    if items and isinstance(items[-1], zarr.codecs.Crc32cCodec):
        return items
    return (*items, zarr.codecs.Crc32cCodec())
