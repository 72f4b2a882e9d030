"""Experiment: would two interleaved range-coder streams speed up the histogram decoder?

Not part of stemdask: a measurement behind a design decision recorded in
``docs/storage.md`` ("Histogram decoder, third pass").  The frames of the
*dense* pixels of one simulated chunk (the pixels coded frame by frame with
decrementing counts, which cost most of the decode at 1 e-/px) are coded with
the codec's own range-coder primitives, either in one stream or alternately
into two, and decoded:

* ``1 stream, groups of 4``: the bin search the decoder uses above 10 bins;
* ``1 stream, branch-free``: a branch-free count over every bound (the
  decoder's search up to 10 bins);
* ``2 streams, branch-free``: two pixels decoded in lock step, one stream
  each, so that the two dependency chains of the coder overlap.

Every decode is checked against the data.  A second table splits the codec's
own decode of the whole chunk (``decode_chunk``) between its dense and its
sparse pixels: the same chunk with the sparse pixels set to 0, with the
dense ones set to 0, and all 0 (what every pixel costs at least); a third
the cost of one non-zero frame of a sparse pixel (its gap, with the pixel's
one histogram count and the write), on chunks whose every pixel has ``k``
frames of value 1 at random.  Thread CPU time, interleaved rounds, medians::

    python benchmarks/experiments/interleaved_lanes.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import interleaved_medians  # noqa: E402
from bench_codec import simulate  # noqa: E402

from stemdask.codecs import histogram as hc  # noqa: E402
from stemdask.codecs._histogram_kernels import (  # noqa: E402
    ONE40,
    RMIN,
    _byte,
    _enc_r,
    _flush,
    _reciprocals,
    _scale,
    _sort_bins,
)

MAXBIN = 64


@njit(cache=True)
def pixel_bins(x, pix, binvals, bincnts, ms):
    """The non-empty bins of each pixel in ``pix``, by falling count (the decoder gets them from the histogram)."""
    n = x.shape[0]
    hist = np.zeros(MAXBIN, np.int64)
    for jj in range(pix.size):
        p = pix[jj]
        for t in range(n):
            hist[x[t, p]] += 1
        m = 0
        for b in range(MAXBIN):
            if hist[b] > 0:
                binvals[jj, m] = b
                bincnts[jj, m] = hist[b]
                m += 1
            hist[b] = 0
        _sort_bins(binvals[jj], bincnts[jj], m)
        ms[jj] = m


@njit(cache=True)
def encode(x, pix, lanes, outs, rec, binvals, bincnts0, ms):
    """Frames of the pixels ``pix`` (their bins from :func:`pixel_bins`) with decrementing counts; pixel ``j``
    into stream ``j % lanes``."""
    n = x.shape[0]
    bincnts = bincnts0.copy()
    low = np.zeros(lanes, np.int64)
    rng = np.full(lanes, ONE40, np.int64)
    pos = np.zeros(lanes, np.int64)
    slot = np.empty(MAXBIN, np.int64)
    for jj in range(pix.size):
        p, m, bincnt, binval = pix[jj], ms[jj], bincnts[jj], binvals[jj]
        lane = jj % lanes
        for j in range(m):
            slot[binval[j]] = j
        left = np.int64(n)
        nz = m
        lo, rg, ps, out = low[lane], rng[lane], pos[lane], outs[lane]
        for t in range(n):
            if nz > 1:
                j = slot[x[t, p]]
                cum = np.int64(0)
                for i in range(j):
                    cum += bincnt[i]
                lo, rg, ps = _enc_r(lo, rg, ps, out, cum, bincnt[j], _scale(rg, left, rec))
                bincnt[j] -= 1
                if bincnt[j] == 0:
                    nz -= 1
                left -= 1
        low[lane], rng[lane], pos[lane] = lo, rg, ps
    for lane in range(lanes):
        pos[lane] = _flush(low[lane], pos[lane], outs[lane])
    return pos


@njit(cache=True)
def decode_one(inp, out, pix, binvals, bincnts0, ms, n, rec, groups):
    """One stream; the bin by groups of four bounds (``groups``) or by a branch-free count over all."""
    bincnts = bincnts0.copy()
    cumul = np.zeros(MAXBIN + 2, np.int64)
    code = np.int64(0)
    for k in range(5):
        code = (code << 8) | _byte(inp, k)
    rng = ONE40
    ipos = np.int64(5)
    for jj in range(pix.size):
        p, m, bincnt, binval = pix[jj], ms[jj], bincnts[jj], binvals[jj]
        cumul[0] = 0
        for i in range(m):
            cumul[i + 1] = cumul[i] + bincnt[i]
        nz, left, only = m, np.int64(n), 0
        for t in range(n):
            if nz > 1:
                r = _scale(rng, left, rec)
                if groups:
                    g4 = 0
                    for q in range(4, m, 4):
                        g4 += cumul[q] * r <= code
                    i = 4 * g4
                    for q in range(i + 1, min(i + 4, m)):
                        i += cumul[q] * r <= code
                else:
                    i = 0
                    for q in range(1, m):
                        i += cumul[q] * r <= code
                cum = cumul[i]
                for q in range(1, m + 1):
                    cumul[q] -= q > i
                code -= cum * r
                rng = bincnt[i] * r
                nb = np.int64(rng < RMIN)
                code = ((code << (8 * nb)) | (_byte(inp, ipos) * nb)) & (ONE40 - 1)
                ipos += nb
                rng <<= 8 * nb
                while rng < RMIN:
                    code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                    ipos += 1
                    rng <<= 8
                bincnt[i] -= 1
                left -= 1
                if bincnt[i] == 0:
                    nz -= 1
                    if nz == 1:
                        only = 0
                        while bincnt[only] == 0:
                            only += 1
                s = binval[i]
            else:
                s = binval[only]
            out[t, p] = s
    return ipos


@njit(cache=True)
def decode_two(ina, inb, out, pix, binvals, bincnts0, ms, n, rec):
    """Two streams in lock step (pixels 2j and 2j + 1), the two coder states written out side by side."""
    bincnts = bincnts0.copy()
    cua = np.zeros(MAXBIN + 2, np.int64)
    cub = np.zeros(MAXBIN + 2, np.int64)
    ca = np.int64(0)
    cb = np.int64(0)
    for k in range(5):
        ca = (ca << 8) | _byte(ina, k)
        cb = (cb << 8) | _byte(inb, k)
    ra, rb = ONE40, ONE40
    ia, ib = np.int64(5), np.int64(5)
    for jj in range(0, pix.size - 1, 2):
        pa, pb, ma, mb = pix[jj], pix[jj + 1], ms[jj], ms[jj + 1]
        ba, bb, va, vb = bincnts[jj], bincnts[jj + 1], binvals[jj], binvals[jj + 1]
        cua[0] = 0
        cub[0] = 0
        for i in range(ma):
            cua[i + 1] = cua[i] + ba[i]
        for i in range(mb):
            cub[i + 1] = cub[i] + bb[i]
        nza, nzb, la, lb, oa, ob = ma, mb, np.int64(n), np.int64(n), 0, 0
        for t in range(n):
            if nza > 1:
                r = _scale(ra, la, rec)
                i = 0
                for q in range(1, ma):
                    i += cua[q] * r <= ca
                cum = cua[i]
                for q in range(1, ma + 1):
                    cua[q] -= q > i
                ca -= cum * r
                ra = ba[i] * r
                nb = np.int64(ra < RMIN)
                ca = ((ca << (8 * nb)) | (_byte(ina, ia) * nb)) & (ONE40 - 1)
                ia += nb
                ra <<= 8 * nb
                while ra < RMIN:
                    ca = ((ca << 8) | _byte(ina, ia)) & (ONE40 - 1)
                    ia += 1
                    ra <<= 8
                ba[i] -= 1
                la -= 1
                if ba[i] == 0:
                    nza -= 1
                    if nza == 1:
                        oa = 0
                        while ba[oa] == 0:
                            oa += 1
                sa = va[i]
            else:
                sa = va[oa]
            if nzb > 1:
                r = _scale(rb, lb, rec)
                i = 0
                for q in range(1, mb):
                    i += cub[q] * r <= cb
                cum = cub[i]
                for q in range(1, mb + 1):
                    cub[q] -= q > i
                cb -= cum * r
                rb = bb[i] * r
                nb = np.int64(rb < RMIN)
                cb = ((cb << (8 * nb)) | (_byte(inb, ib) * nb)) & (ONE40 - 1)
                ib += nb
                rb <<= 8 * nb
                while rb < RMIN:
                    cb = ((cb << 8) | _byte(inb, ib)) & (ONE40 - 1)
                    ib += 1
                    rb <<= 8
                bb[i] -= 1
                lb -= 1
                if bb[i] == 0:
                    nzb -= 1
                    if nzb == 1:
                        ob = 0
                        while bb[ob] == 0:
                            ob += 1
                sb = vb[i]
            else:
                sb = vb[ob]
            out[t, pa] = sa
            out[t, pb] = sb
    return ia + ib


def whole_chunk_split(repeat: int) -> None:
    """ms of ``decode_chunk`` on a chunk, on its dense pixels only, its sparse pixels only, and on zeros."""
    print("| dose e-/px | whole chunk ms | dense pixels only | sparse pixels only | all zero |")
    print("|---|---|---|---|---|")
    for dose in (0.1, 1.0):
        x, _ = simulate(dose, scan=(16, 16), det=(128, 128))
        frames = x.reshape(256, -1)
        dense = 3 * (frames > 0).sum(0) > frames.shape[0]
        variants = [frames.copy() for _ in range(4)]
        variants[1][:, ~dense] = 0
        variants[2][:, dense] = 0
        variants[3][...] = 0
        chunks = [hc.encode_chunk(v.reshape(x.shape)) for v in variants]
        for v, c in zip(variants, chunks):
            if not np.array_equal(hc.decode_chunk(c).reshape(v.shape), v):
                raise SystemExit("decode_chunk is not exact")
        t = interleaved_medians([lambda c=c: hc.decode_chunk(c) for c in chunks], repeat, clock=time.thread_time)
        print(f"| {dose} | " + " | ".join(f"{1e3 * v:.1f}" for v in t) + " |", flush=True)


def sparse_frame_cost(repeat: int) -> None:
    """ns per non-zero frame of pixels with k frames of value 1 (and nothing else), beyond an all-zero chunk."""
    rng = np.random.default_rng(0)
    n, shape = 256, (16, 16, 128, 128)
    pixels = shape[2] * shape[3]
    ks = (1, 2, 4, 8, 16, 32, 64)
    chunks = []
    for k in ks:
        x = np.zeros((n, pixels), np.uint16)
        for p in range(pixels):
            x[rng.choice(n, k, replace=False), p] = 1
        chunks.append(hc.encode_chunk(x.reshape(shape)))
        if not np.array_equal(hc.decode_chunk(chunks[-1]).reshape(n, pixels), x):
            raise SystemExit("decode_chunk is not exact")
    chunks.append(hc.encode_chunk(np.zeros(shape, np.uint16)))
    t = interleaved_medians([lambda c=c: hc.decode_chunk(c) for c in chunks], repeat, clock=time.thread_time)
    print("| non-zero frames per pixel (of 256) | " + " | ".join(map(str, ks)) + " |")
    print("|---|" + "---|" * len(ks))
    costs = [f"{1e9 * (v - t[-1]) / (k * pixels):.0f}" for k, v in zip(ks, t)]
    print("| ns per non-zero frame | " + " | ".join(costs) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    whole_chunk_split(args.repeat)
    print()
    sparse_frame_cost(args.repeat)
    print()
    print(
        "| dose e-/px | dense pixels | bytes, 1 / 2 streams | ns per frame: 1 stream, groups of 4 "
        "| 1 stream, branch-free | 2 streams, branch-free |"
    )
    print("|---|---|---|---|---|---|")
    for dose in (0.1, 1.0):
        x, _ = simulate(dose, scan=(16, 16), det=(128, 128))
        frames = np.ascontiguousarray(x.reshape(256, -1)).astype(np.int64)
        n = frames.shape[0]
        if frames.max() >= MAXBIN:
            raise SystemExit(f"this experiment handles values below {MAXBIN}; the chunk has {frames.max()}")
        dense = np.flatnonzero(3 * (frames > 0).sum(0) > n)  # the decoder's rule for frame-by-frame pixels
        pix = dense[: dense.size // 2 * 2]
        rec = _reciprocals(n)
        binvals = np.zeros((pix.size, MAXBIN), np.int64)
        bincnts = np.zeros((pix.size, MAXBIN), np.int64)
        ms = np.zeros(pix.size, np.int64)
        pixel_bins(frames, pix, binvals, bincnts, ms)
        streams = {}
        for lanes in (1, 2):
            outs = np.zeros((lanes, 16 * n * pix.size + 64), np.uint8)
            pos = encode(frames, pix, lanes, outs, rec, binvals, bincnts, ms)
            streams[lanes] = [outs[lane, : pos[lane]].copy() for lane in range(lanes)]
        out = np.zeros_like(frames, dtype=np.uint16)
        fns = [
            lambda: decode_one(streams[1][0], out, pix, binvals, bincnts, ms, n, rec, True),
            lambda: decode_one(streams[1][0], out, pix, binvals, bincnts, ms, n, rec, False),
            lambda: decode_two(*streams[2], out, pix, binvals, bincnts, ms, n, rec),
        ]
        for fn in fns:
            out[...] = 0
            fn()
            if not np.array_equal(out[:, pix], frames[:, pix]):
                raise SystemExit(f"a decoder of this experiment is wrong at {dose} e-/px")
        t = interleaved_medians(fns, args.repeat, clock=time.thread_time)
        ns = [1e9 * v / (n * pix.size) for v in t]
        sizes = f"{len(streams[1][0])} / {sum(map(len, streams[2]))}"
        print(f"| {dose} | {pix.size} | {sizes} | {ns[0]:.1f} | {ns[1]:.1f} | {ns[2]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
