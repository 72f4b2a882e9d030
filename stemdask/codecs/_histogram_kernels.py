"""Numba kernels of the per-pixel histogram codec (see :mod:`stemdask.codecs.histogram`).

A byte-wise range coder with a 40-bit window (``low`` < 2**40, ``range`` in
[2**32, 2**40], carries propagated back into the output buffer) codes every
symbol with an integer frequency ``f``, cumulative frequency ``cum`` and total
``tot`` (any total up to 2**24, which the decrementing-count model needs):
the range unit is ``r = range // tot``, except in the frame coder, where it is
``((range >> 9) * (2**31 // tot)) >> 22`` for totals up to 2**16 (no division
on the critical path; still ``r * tot <= range``).  All arithmetic is int64,
so the bytes are the same on every platform.

Data are coded pixel-major: for each detector pixel its histogram over the
chunk's frames, then its frames.  The self-contained model codes each
pixel's frames with *decrementing counts* (the probability of a symbol is its
count among the frames not yet coded), which costs exactly the log of the
multinomial coefficient, i.e. slightly less than the pixel's empirical
entropy; the bins are visited by falling count, and the decoder finds a
symbol by multiplications, not a division.  The histogram itself (highest
non-empty bin, then the counts of bins 1..L) is coded with adaptive tables
whose context is the same counts in four causal neighbour pixels and the
number of frames left to share out.

Kernels return a status code instead of raising, so that a corrupted chunk
never crashes a worker: ``>= 0`` success, ``NEED_SPACE`` (encoder only: the
output buffer was too small) or ``CORRUPT``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ONE40 = np.int64(1) << np.int64(40)
RMIN = np.int64(1) << np.int64(32)
NEED_SPACE = -1
CORRUPT = -2

#: adaptive tables: alphabet of count symbols, increment, halving limit
NSYM = 48
INC = 24
LIMIT = 1 << 16
#: contexts of the histogram-count tables: 4 buckets of the frames left x 4 bin
#: classes x NCB buckets of the neighbours' counts; the escapes; the highest bin
NCB = 40
ESC_CTX = 16 * NCB
LAST_CTX = 16 * NCB + 1
NCTX = 17 * NCB + 1


@njit(cache=True)
def _bitlen(c):
    n = 0
    while c > 0:
        c >>= 1
        n += 1
    return n


@njit(cache=True)
def _count_symbol(c):
    """Symbol of a non-negative integer: itself below 16, else 11 + bit length (mantissa raw)."""
    if c < 16:
        return c, 0
    nb = _bitlen(c)
    return 11 + nb, nb - 1


@njit(cache=True)
def _ctx_bucket(pred):
    if pred < 24:
        return pred
    b = 19 + _bitlen(pred)  # pred 24..31 -> 24, 32..63 -> 25, ...
    return b if b < NCB else NCB - 1


# -- element access: signed data arrive as an unsigned view (sign bit flipped) ----------------------


@njit(cache=True)
def _load(x, t, p, flip):
    """Element (t, p) of an unsigned view, as a biased unsigned value."""
    return np.int64(x[t, p]) ^ flip


@njit(cache=True)
def _store(out, t, p, flip, v):
    out[t, p] = v ^ flip


# -- encoder primitives ------------------------------------------------------


@njit(cache=True)
def _enc(low, rng, pos, out, cum, f, tot):
    r = rng // tot
    low += cum * r
    rng = f * r
    if low >= ONE40:
        low -= ONE40
        i = pos - 1
        while out[i] == 255:
            out[i] = 0
            i -= 1
        out[i] += 1
    while rng < RMIN:
        out[pos] = (low >> 32) & 255
        pos += 1
        low = (low << 8) & (ONE40 - 1)
        rng <<= 8
    return low, rng, pos


RECIP_MAX = 1 << 16


@njit(cache=True)
def _reciprocals(n):
    """floor(2**31 / t) for t = 1 .. min(n, RECIP_MAX): division-free scales."""
    top = n if n < RECIP_MAX else RECIP_MAX
    rec = np.zeros(top + 1, dtype=np.int64)
    for t in range(1, top + 1):
        rec[t] = (np.int64(1) << 31) // t
    return rec


@njit(cache=True)
def _scale(rng, left, rec):
    """The range unit for a total of ``left`` frames: about rng / left, never more.

    Up to RECIP_MAX frames it is computed with a multiplication by a
    reciprocal (r * left <= rng still holds, the coding loss is < 2**-15
    relative), beyond with a division.
    """
    if left <= RECIP_MAX:
        return ((rng >> 9) * rec[left]) >> 22
    return rng // left


@njit(cache=True)
def _enc_r(low, rng, pos, out, cum, f, r):
    """Code with a given range unit ``r`` (cum + f <= total, r * total <= rng)."""
    low += cum * r
    rng = f * r
    if low >= ONE40:
        low -= ONE40
        i = pos - 1
        while out[i] == 255:
            out[i] = 0
            i -= 1
        out[i] += 1
    while rng < RMIN:
        out[pos] = (low >> 32) & 255
        pos += 1
        low = (low << 8) & (ONE40 - 1)
        rng <<= 8
    return low, rng, pos


@njit(cache=True)
def _enc_bits(low, rng, pos, out, value, nbits):
    """Code ``nbits`` raw bits of ``value`` (uniform), at most 16 per step."""
    while nbits > 0:
        k = nbits if nbits < 16 else 16
        nbits -= k
        piece = (value >> nbits) & ((1 << k) - 1)
        low, rng, pos = _enc(low, rng, pos, out, piece, 1, 1 << k)
    return low, rng, pos


@njit(cache=True)
def _enc_adaptive(low, rng, pos, out, freq, tot, ctx, s):
    cum = 0
    for i in range(s):
        cum += freq[ctx, i]
    low, rng, pos = _enc(low, rng, pos, out, cum, freq[ctx, s], tot[ctx])
    _update(freq, tot, ctx, s)
    return low, rng, pos


@njit(cache=True)
def _update(freq, tot, ctx, s):
    freq[ctx, s] += INC
    tot[ctx] += INC
    if tot[ctx] > LIMIT:
        t = 0
        for i in range(NSYM):
            freq[ctx, i] = (freq[ctx, i] + 1) >> 1
            t += freq[ctx, i]
        tot[ctx] = t


@njit(cache=True)
def _enc_number(low, rng, pos, out, freq, tot, ctx, c):
    s, nb = _count_symbol(c)
    low, rng, pos = _enc_adaptive(low, rng, pos, out, freq, tot, ctx, s)
    if nb > 0:
        low, rng, pos = _enc_bits(low, rng, pos, out, c - (np.int64(1) << nb), nb)
    return low, rng, pos


@njit(cache=True)
def _flush(low, pos, out):
    for k in range(5):
        out[pos] = (low >> (32 - 8 * k)) & 255
        pos += 1
    return pos


# -- decoder primitives ------------------------------------------------------


@njit(cache=True)
def _byte(inp, ipos):
    if ipos < inp.size:
        return np.int64(inp[ipos])
    return np.int64(0)


@njit(cache=True)
def _dec_target(code, rng, tot):
    """Return (r, v): the scale and the cumulative target in [0, tot)."""
    r = rng // tot
    v = code // r
    if v >= tot:  # only on corrupted input; keeps the search in bounds
        v = tot - 1
    return r, v


@njit(cache=True)
def _dec_apply(code, rng, ipos, inp, r, cum, f):
    code -= cum * r
    rng = f * r
    while rng < RMIN:
        code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
        ipos += 1
        rng <<= 8
    return code, rng, ipos


@njit(cache=True)
def _dec_bits(code, rng, ipos, inp, nbits):
    value = np.int64(0)
    while nbits > 0:
        k = nbits if nbits < 16 else 16
        nbits -= k
        r, v = _dec_target(code, rng, np.int64(1) << k)
        code, rng, ipos = _dec_apply(code, rng, ipos, inp, r, v, 1)
        value = (value << k) | v
    return code, rng, ipos, value


@njit(cache=True)
def _dec_adaptive(code, rng, ipos, inp, freq, tot, ctx):
    r, v = _dec_target(code, rng, tot[ctx])
    cum = np.int64(0)
    s = 0
    while s < NSYM - 1 and cum + freq[ctx, s] <= v:
        cum += freq[ctx, s]
        s += 1
    code, rng, ipos = _dec_apply(code, rng, ipos, inp, r, cum, freq[ctx, s])
    _update(freq, tot, ctx, s)
    return code, rng, ipos, s


@njit(cache=True)
def _dec_number(code, rng, ipos, inp, freq, tot, ctx):
    code, rng, ipos, s = _dec_adaptive(code, rng, ipos, inp, freq, tot, ctx)
    if s < 16:
        return code, rng, ipos, np.int64(s)
    nb = s - 11 - 1
    code, rng, ipos, m = _dec_bits(code, rng, ipos, inp, nb)
    return code, rng, ipos, (np.int64(1) << nb) + m


# In decode_local every range-coder step of the histograms, gaps and bins is written out in
# the loop: a helper returning the decoder state (code, range, position, value) costs more
# than the step itself under numba, even with inline="always" (the escape-or-store step as a
# helper: 322 -> 60 MB/s; the gap and histogram-count steps as helpers, as before issue 13
# item 6: decoding 1.4-2.3x slower).  The helpers below remain for the rare escapes and for
# the shared-model decoder.
@njit(cache=True, nogil=True)
def _dec_start(inp):
    """Decoder state at the start of a stream: (code from its first 5 bytes, range, position)."""
    code = np.int64(0)
    for k in range(5):
        code = (code << 8) | _byte(inp, k)
    return code, ONE40, np.int64(5)


@njit(cache=True)
def _init_tables():
    freq = np.ones((NCTX, NSYM), dtype=np.int64)
    tot = np.full(NCTX, NSYM, dtype=np.int64)
    return freq, tot


@njit(cache=True)
def _neighbour_ctx(rows, last, cur, y, x, b, K, W, remaining):
    """Context of the count of bin ``b``: frames left to share out x class of
    the bin x bucket of the neighbours' counts (left, up-left, up, up-right;
    scaled to four)."""
    prev = 1 - cur
    pred = np.int64(0)
    nn = 0
    if x > 0:
        nn += 1
        if b <= last[cur, x - 1]:
            pred += rows[cur, x - 1, b]
    if y > 0:
        nn += 1
        if b <= last[prev, x]:
            pred += rows[prev, x, b]
        if x > 0:
            nn += 1
            if b <= last[prev, x - 1]:
                pred += rows[prev, x - 1, b]
        if x + 1 < W:
            nn += 1
            if b <= last[prev, x + 1]:
                pred += rows[prev, x + 1, b]
    if nn > 0 and nn < 4:
        pred = (pred * 4 + nn // 2) // nn
    cls = 3 if b == K else (b - 1 if b < 3 else 2)
    rb = 0 if remaining <= 1 else (1 if remaining <= 3 else (2 if remaining <= 7 else 3))
    return (rb * 4 + cls) * NCB + _ctx_bucket(pred)


@njit(cache=True)
def _last_ctx(last, cur, y, x, W):
    """Context of a pixel's highest non-empty bin: the neighbours' highest bins."""
    prev = 1 - cur
    pred = np.int64(0)
    nn = 0
    if x > 0:
        nn += 1
        pred += last[cur, x - 1]
    if y > 0:
        nn += 1
        pred += last[prev, x]
        if x > 0:
            nn += 1
            pred += last[prev, x - 1]
        if x + 1 < W:
            nn += 1
            pred += last[prev, x + 1]
    if nn > 0 and nn < 4:
        pred = (pred * 4 + nn // 2) // nn
    return LAST_CTX + _ctx_bucket(pred)


@njit(cache=True)
def _sort_bins(binval, bincnt, m):
    """Order the non-empty bins by falling count (ties: by value), so that the
    linear search over cumulative counts usually stops at once."""
    for i in range(1, m):
        v = binval[i]
        c = bincnt[i]
        j = i - 1
        while j >= 0 and (bincnt[j] < c or (bincnt[j] == c and binval[j] > v)):
            binval[j + 1] = binval[j]
            bincnt[j + 1] = bincnt[j]
            j -= 1
        binval[j + 1] = v
        bincnt[j + 1] = c


# -- self-contained chunks: see encode_local / decode_local below (after the gap coder) ------------


# -- chunks coded with a model shared across chunks -------------------------


@njit(cache=True, nogil=True)
def encode_shared(x, flip, cumtab, K, base, emin, out):
    """Code ``x`` (frames x pixels) with fixed per-pixel frequencies.

    ``cumtab[p]`` holds the cumulative frequencies of symbols 0..K (escape K)
    of pixel ``p``: ``cumtab[p, s]`` .. ``cumtab[p, s + 1]``; every symbol has
    a non-zero frequency.
    """
    n, P = x.shape
    freq, tot = _init_tables()
    margin = 10 * n + 64
    low = np.int64(0)
    rng = ONE40
    pos = 0
    for p in range(P):
        if pos + margin > out.size:
            return NEED_SPACE
        total = cumtab[p, K + 1]
        for t in range(n):
            u = _load(x, t, p, flip) - base
            s = u if (u >= 0 and u < K) else K
            low, rng, pos = _enc(low, rng, pos, out, cumtab[p, s], cumtab[p, s + 1] - cumtab[p, s], total)
            if s == K:
                low, rng, pos = _enc_number(low, rng, pos, out, freq, tot, ESC_CTX, _load(x, t, p, flip) - emin)
    pos = _flush(low, pos, out)
    return pos


@njit(cache=True, nogil=True)
def decode_shared(inp, out, flip, cumtab, K, base, emin, vmin, vmax):
    """Inverse of :func:`encode_shared`."""
    n, P = out.shape
    freq, tot = _init_tables()
    code, rng, ipos = _dec_start(inp)
    for p in range(P):
        total = cumtab[p, K + 1]
        for t in range(n):
            r, v = _dec_target(code, rng, total)
            # binary search of the symbol whose cumulative range holds v
            lo = 0
            hi = K
            while lo < hi:
                mid = (lo + hi + 1) >> 1
                if cumtab[p, mid] <= v:
                    lo = mid
                else:
                    hi = mid - 1
            s = lo
            code, rng, ipos = _dec_apply(code, rng, ipos, inp, r, cumtab[p, s], cumtab[p, s + 1] - cumtab[p, s])
            if s == K:
                code, rng, ipos, e = _dec_number(code, rng, ipos, inp, freq, tot, ESC_CTX)
                value = emin + e
                if value < vmin or value > vmax or (value - base >= 0 and value - base < K):
                    return CORRUPT
                _store(out, t, p, flip, value)
            else:
                _store(out, t, p, flip, base + s)
    if ipos != inp.size:
        return CORRUPT
    return 0


@njit(cache=True, nogil=True)
def pixel_histograms(x, flip, K, base):
    """Counts of symbols 0..K (K = escape) of every pixel of ``x`` (frames x pixels)."""
    n, P = x.shape
    h = np.zeros((P, K + 1), dtype=np.int64)
    for p in range(P):
        for t in range(n):
            u = _load(x, t, p, flip) - base
            s = u if (u >= 0 and u < K) else K
            h[p, s] += 1
    return h


# -- format version 2: sparse pixels cost their non-zero frames ---------------------------------
#
# A pixel whose histogram leaves at most a third of its frames outside bin 0 is
# "sparse": instead of one symbol per frame, its non-zero frames are coded as
# gaps (the zero frames before each one) followed by the frame's bin, with
# decrementing counts over the non-zero bins.  The information is the same
# (log C(n, k) for where the k non-zero frames are, times the multinomial of
# their values), so the size stays within a fraction of a percent of version 1,
# but decoding a sparse pixel costs one or two symbols per non-zero frame,
# not one per frame.  Dense pixels are coded as in version 1.
#
# A gap before one of the k' non-zero frames still to come among n' frames:
#   k' == n'            nothing (it is 0);
#   k' == 1             uniform over the n' positions (exact);
#   k' == 2, n' <= 4096 exact: P(g) = (n' - 1 - g) / C(n', 2);
#   otherwise           geometric with p = k' / n', quantised to one of GAP_LEVELS
#                       levels (8 per octave), from a frozen table of frequencies
#                       (total 2**16) for g < G and an escape for g >= G, after
#                       which the rest of the gap is coded in the same way with
#                       n' - G frames (the geometric law is memoryless).

GAP_SHIFT = 16
GAP_TOT = 1 << GAP_SHIFT
GAP_CAP = 1024
GAP_LEVELS = 176
GAP_EXACT2 = 4096
#: a pixel is coded sparse when SPARSE_RATIO * (frames outside bin 0) <= frames
SPARSE_RATIO = 3
#: how the decoder finds the bin of a frame: a pixel with at most BRANCHLESS_BINS bins by a search
#: (bins sorted by count, it usually stops at once), with up to BRANCHLESS_MAX by a branch-free count
#: over its bins, with more by a branch-free count over groups of four bins, then within the group
#: (measured faster than the search there: a mispredicted exit costs more than the counts)
BRANCHLESS_BINS = 4
BRANCHLESS_MAX = 10


def _gap_level_bounds(lev: int) -> tuple[int, int]:
    """[lo, hi) of x = floor(k' * 2**24 / n') mapped to level ``lev``."""
    if lev < 16:
        return lev, lev + 1
    nb, m = lev // 8 + 3, lev % 8
    lo = (8 + m) << (nb - 4)
    return lo, lo + (1 << (nb - 4))


def _gap_tables() -> tuple[np.ndarray, np.ndarray]:
    """Cumulative frequencies of the quantised geometric gap laws (exact integer arithmetic)."""
    cum = np.zeros((GAP_LEVELS, GAP_CAP + 2), dtype=np.int64)
    count = np.zeros(GAP_LEVELS, dtype=np.int64)
    one = 1 << 48
    for lev in range(1, GAP_LEVELS):
        lo, hi = _gap_level_bounds(lev)
        p = (lo + hi) << 23  # the middle of the level, in units of 2**-48
        q = one - p
        mass = p << 16  # 2**16 * p * q**g, in units of 2**-48
        c = 0
        g = 0
        while g < GAP_CAP:
            f = (mass + (1 << 47)) >> 48
            if f == 0:
                break
            c += f
            g += 1
            cum[lev, g] = c
            mass = (mass * q) >> 48
        while cum[lev, g] > GAP_TOT - 1:  # keep room for the escape
            g -= 1
        if g == 0:  # p close to 1: the gap 0 takes all but the escape
            g = 1
            cum[lev, 1] = GAP_TOT - 1
        count[lev] = g
        cum[lev, g + 1] = GAP_TOT
    return cum, count


GAP_CUM, GAP_COUNT = _gap_tables()
# int32 (every entry <= GAP_TOT): half the cache footprint of int64 for the tables read per gap
GAP_CUM = GAP_CUM.astype(np.int32)
#: GAP_START[lev, v >> 8]: the first gap whose range of cumulative frequencies can hold v
GAP_START = np.zeros((GAP_LEVELS, GAP_TOT >> 8), dtype=np.int16)
for _lev in range(1, GAP_LEVELS):
    _edges = GAP_CUM[_lev, 1 : GAP_COUNT[_lev] + 1]
    GAP_START[_lev] = np.searchsorted(_edges, np.arange(0, GAP_TOT, 256), side="right")
#: bit length of a byte
BITLEN8 = np.array([int(v).bit_length() for v in range(256)], dtype=np.int64)


@njit(cache=True)
def _gap_level(k, n, rec):
    """Level of p = k / n: x = about k * 2**24 / n (by a reciprocal when n <= RECIP_MAX), then
    its bit length and three bits below the leading one."""
    if n <= RECIP_MAX:
        x = (k * rec[n]) >> 7
    else:
        x = (k << 24) // n
    if x < 16:
        return x
    if x >= 1 << 16:
        nb = 16 + BITLEN8[x >> 16]
    elif x >= 1 << 8:
        nb = 8 + BITLEN8[x >> 8]
    else:
        nb = BITLEN8[x]
    return (nb - 3) * 8 + ((x >> (nb - 4)) & 7)


@njit(cache=True)
def _enc_gap(low, rng, pos, out, g, k, n, gcum, gcount, rec):
    """Code a gap ``g`` (0 <= g <= n - k) before one of ``k`` non-zero frames among ``n``."""
    while True:
        if k == n:
            return low, rng, pos
        if k == 1:
            return _enc_r(low, rng, pos, out, g, 1, _scale(rng, n, rec))
        if k == 2 and n <= GAP_EXACT2:
            cum = g * (n - 1) - (g * (g - 1)) // 2
            return _enc(low, rng, pos, out, cum, n - 1 - g, (n * (n - 1)) // 2)
        lev = _gap_level(k, n, rec)
        G = gcount[lev]
        r = rng >> GAP_SHIFT
        if g < G:
            return _enc_r(low, rng, pos, out, gcum[lev, g], gcum[lev, g + 1] - gcum[lev, g], r)
        low, rng, pos = _enc_r(low, rng, pos, out, gcum[lev, G], GAP_TOT - gcum[lev, G], r)
        g -= G
        n -= G


@njit(cache=True, nogil=True)
def encode_local(x, flip, H, W, K, base, emin, out, gcum, gcount, sparse_ok):
    """Code ``x`` (frames x pixels), in pixel-major order with one histogram per pixel.

    Symbols are ``u = value - base`` for ``0 <= u < K`` and the escape ``K``
    otherwise (the escaped value is coded as ``value - emin``).  With
    ``sparse_ok`` (format version 2) a pixel with at most a third of its
    frames outside bin 0 is coded by its non-zero frames (their gaps, then
    their bins); without (version 1) every pixel codes all its frames.
    Returns the number of bytes written or NEED_SPACE.
    """
    n, P = x.shape
    freq, tot = _init_tables()
    rows = np.zeros((2, W, K + 1), dtype=np.int64)
    last = np.zeros((2, W), dtype=np.int64)
    hist = np.zeros(K + 1, dtype=np.int64)
    syms = np.empty(n, dtype=np.int64)
    binval = np.empty(K + 1, dtype=np.int64)
    bincnt = np.empty(K + 1, dtype=np.int64)
    slot = np.empty(K + 1, dtype=np.int64)
    rec = _reciprocals(n)
    margin = 14 * n + 12 * (K + 2) + 64
    low = np.int64(0)
    rng = ONE40
    pos = 0
    for p in range(P):
        if pos + margin > out.size:
            return NEED_SPACE
        y = p // W
        xx = p - y * W
        cur = y & 1
        for t in range(n):
            u = _load(x, t, p, flip) - base
            s = u if (u >= 0 and u < K) else K
            syms[t] = s
            hist[s] += 1
        lastb = 0
        for b in range(K, 0, -1):
            if hist[b] > 0:
                lastb = b
                break
        low, rng, pos = _enc_number(low, rng, pos, out, freq, tot, _last_ctx(last, cur, y, xx, W), lastb)
        remaining = np.int64(n)
        for b in range(1, lastb + 1):
            ctx = _neighbour_ctx(rows, last, cur, y, xx, b, K, W, remaining)
            c = hist[b] - 1 if b == lastb else hist[b]
            low, rng, pos = _enc_number(low, rng, pos, out, freq, tot, ctx, c)
            remaining -= hist[b]
            rows[cur, xx, b] = hist[b]
        rows[cur, xx, 0] = hist[0]
        last[cur, xx] = lastb
        k = n - hist[0]
        sparse = sparse_ok and SPARSE_RATIO * k <= n
        first = 1 if sparse else 0
        m = 0
        for b in range(first, lastb + 1):
            if hist[b] > 0:
                binval[m] = b
                bincnt[m] = hist[b]
                m += 1
        _sort_bins(binval, bincnt, m)
        for j in range(m):
            slot[binval[j]] = j
        if sparse:  # where the non-zero frames are: the gaps before each
            nleft = np.int64(n)
            kleft = k
            start = 0
            for t in range(n):
                if syms[t] != 0:
                    low, rng, pos = _enc_gap(low, rng, pos, out, t - start, kleft, nleft, gcum, gcount, rec)
                    nleft -= t - start + 1
                    kleft -= 1
                    start = t + 1
        nz = m
        left = np.int64(k) if sparse else np.int64(n)
        for t in range(n):
            s = syms[t]
            if sparse and s == 0:
                continue
            if nz > 1:
                j = slot[s]
                cum = np.int64(0)
                for i in range(j):
                    cum += bincnt[i]
                low, rng, pos = _enc_r(low, rng, pos, out, cum, bincnt[j], _scale(rng, left, rec))
                bincnt[j] -= 1
                if bincnt[j] == 0:
                    nz -= 1
                left -= 1
            if s == K:
                low, rng, pos = _enc_number(low, rng, pos, out, freq, tot, ESC_CTX, _load(x, t, p, flip) - emin)
        for b in range(lastb + 1):
            hist[b] = 0
    pos = _flush(low, pos, out)
    return pos


@njit(cache=True, nogil=True)
def decode_local(
    inp, out, n, P, flip, W, K, base, emin, vmin, vmax, gcum, gcount, gstart, sparse_ok, events, ev_t, ev_p, counts
):
    """Inverse of :func:`encode_local` (``sparse_ok`` as it was coded: True for format version 2).

    With ``events`` False it writes into ``out`` (frames x pixels), which the
    caller has filled with the biased value of bin 0 (``base ^ flip``): the
    frames of a sparse pixel cost only its non-zero values, those of a dense
    pixel are all written (pixel after pixel, down a column: the rows of
    ``out`` that one column touches stay in cache for the next columns).
    Returns 0.  With ``events`` True (for chunks whose minimum ``base`` is 0)
    it writes nothing to ``out``: for every frame of every pixel whose value
    is not ``base`` it appends ``value - base`` electrons (frame ``ev_t``,
    pixel ``ev_p``), in pixel-major order, and adds them to ``counts[frame]``
    (zeros on entry); it returns the number of electrons, or NEED_SPACE when
    they do not fit.  CORRUPT on an inconsistent stream.
    """
    freq, tot = _init_tables()
    rows = np.zeros((2, W, K + 1), dtype=np.int64)
    last = np.zeros((2, W), dtype=np.int64)
    binval = np.empty(K + 1, dtype=np.int64)
    bincnt = np.empty(K + 1, dtype=np.int64)
    hist = np.zeros(K + 1, dtype=np.int64)
    cumul = np.zeros(K + 2, dtype=np.int64)
    rec = _reciprocals(n)
    cap = ev_t.size
    ne = 0
    frames = np.empty(n, dtype=np.int64)
    code, rng, ipos = _dec_start(inp)
    for p in range(P):
        y = p // W
        xx = p - y * W
        cur = y & 1
        # the histogram: the highest non-empty bin (b == 0), then the counts of bins 1 .. lastb, each an
        # adaptive number; the range-coder steps are written out here (a helper returning the decoder
        # state costs more than the step itself under numba)
        remaining = np.int64(n)
        lastb = np.int64(0)
        b = np.int64(0)
        while True:
            if b == 0:
                ctx = _last_ctx(last, cur, y, xx, W)
            else:
                ctx = _neighbour_ctx(rows, last, cur, y, xx, b, K, W, remaining)
            tc = tot[ctx]
            r = rng // tc
            v = code // r
            if v >= tc:
                v = tc - 1
            cum = np.int64(0)
            s = 0
            while s < NSYM - 1 and cum + freq[ctx, s] <= v:
                cum += freq[ctx, s]
                s += 1
            code -= cum * r
            rng = freq[ctx, s] * r
            nb = np.int64(rng < RMIN)
            code = ((code << (8 * nb)) | (_byte(inp, ipos) * nb)) & (ONE40 - 1)
            ipos += nb
            rng <<= 8 * nb
            while rng < RMIN:
                code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                ipos += 1
                rng <<= 8
            _update(freq, tot, ctx, s)
            value = np.int64(s)
            if s >= 16:  # 11 + bit length: the mantissa follows as raw bits
                nb = s - 12
                mant = np.int64(0)
                while nb > 0:
                    kb = nb if nb < 16 else 16
                    nb -= kb
                    r = rng >> kb
                    v = code // r
                    if v >= np.int64(1) << kb:
                        v = (np.int64(1) << kb) - 1
                    code -= v * r
                    rng = r
                    while rng < RMIN:
                        code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                        ipos += 1
                        rng <<= 8
                    mant = (mant << kb) | v
                value = (np.int64(1) << (s - 12)) + mant
            if b == 0:
                lastb = value
                if lastb > K:
                    return CORRUPT
                if lastb == 0:
                    break
            else:
                c = value + 1 if b == lastb else value
                if c > remaining:
                    return CORRUPT
                hist[b] = c
                remaining -= c
                rows[cur, xx, b] = c
                if b == lastb:
                    break
            b += 1
        hist[0] = remaining
        rows[cur, xx, 0] = remaining
        last[cur, xx] = lastb
        k = n - remaining
        sparse = sparse_ok and SPARSE_RATIO * k <= n
        if k == 0:  # every frame in bin 0: nothing else is coded, and out holds it already
            hist[0] = 0
            continue
        first = 1 if sparse else 0
        m = 0
        for b in range(first, lastb + 1):
            if hist[b] > 0:
                binval[m] = b
                bincnt[m] = hist[b]
                m += 1
        for b in range(lastb + 1):
            hist[b] = 0
        _sort_bins(binval, bincnt, m)
        # the non-zero frames of a sparse pixel (all its gaps come first), then their bins
        if sparse:
            nleft = np.int64(n)
            t = np.int64(-1)
            for j in range(k):
                kk = k - j
                g = np.int64(0)
                nn = nleft
                while True:  # the inverse of _enc_gap: one pass, more after escapes of the geometric law
                    if kk == nn:
                        break
                    if kk == 1:  # uniform over the nn positions
                        r = _scale(rng, nn, rec)
                        v = code // r
                        if v >= nn:
                            return CORRUPT
                        code -= v * r
                        rng = r
                        while rng < RMIN:
                            code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                            ipos += 1
                            rng <<= 8
                        g += v
                        break
                    if kk == 2 and nn <= GAP_EXACT2:  # P(g) = (nn - 1 - g) / C(nn, 2)
                        tt = (nn * (nn - 1)) // 2
                        r = rng // tt
                        v = code // r
                        if v >= tt:
                            v = tt - 1
                        # the largest h with cum(h) = h (nn - 1) - h (h - 1) / 2 <= v: the root of the
                        # quadratic, then exact integer corrections
                        d = np.float64(2 * nn - 1)
                        h = np.int64((d - np.sqrt(max(d * d - 8.0 * v, 0.0))) * 0.5)
                        h = min(max(h, np.int64(0)), nn - 2)
                        while h < nn - 2 and (h + 1) * (nn - 1) - ((h + 1) * h) // 2 <= v:
                            h += 1
                        while h > 0 and h * (nn - 1) - (h * (h - 1)) // 2 > v:
                            h -= 1
                        code -= (h * (nn - 1) - (h * (h - 1)) // 2) * r
                        rng = (nn - 1 - h) * r
                        while rng < RMIN:
                            code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                            ipos += 1
                            rng <<= 8
                        g += h
                        break
                    lev = _gap_level(kk, nn, rec)
                    G = gcount[lev]
                    r = rng >> GAP_SHIFT
                    v = code // r
                    if v >= GAP_TOT:
                        return CORRUPT
                    h = np.int64(gstart[lev, v >> 8])
                    while h < G and gcum[lev, h + 1] <= v:
                        h += 1
                    c0 = np.int64(gcum[lev, h])
                    code -= c0 * r
                    rng = (np.int64(gcum[lev, h + 1]) - c0) * r
                    nb = np.int64(rng < RMIN)
                    code = ((code << (8 * nb)) | (_byte(inp, ipos) * nb)) & (ONE40 - 1)
                    ipos += nb
                    rng <<= 8 * nb
                    while rng < RMIN:
                        code = ((code << 8) | _byte(inp, ipos)) & (ONE40 - 1)
                        ipos += 1
                        rng <<= 8
                    g += h
                    if h < G:
                        break
                    nn -= G  # the escape: the rest of the gap among nn - G frames
                    if nn < kk:
                        return CORRUPT
                if g > nleft - kk:
                    return CORRUPT
                t += g + 1
                nleft -= g + 1
                frames[j] = t
        steps = k if sparse else np.int64(n)
        if m == 1 and binval[0] != K:  # one value for all of them: nothing coded
            value = base + binval[0]
            if events:
                if value != base:
                    if ne + (value - base) * steps > cap:
                        return NEED_SPACE
                    for j in range(steps):
                        ne = _append(ev_t, ev_p, counts, ne, frames[j] if sparse else j, p, value - base)
            elif sparse:
                for j in range(steps):
                    out[frames[j], p] = value ^ flip
            elif value != base:
                for j in range(steps):
                    out[j, p] = value ^ flip
            continue
        nz = m
        left = steps
        only = 0
        # how the bin of each frame is found: 0 a search (few bins, it stops early), 1 a branch-free count
        # over the bins, 2 a branch-free count over groups of four bins, then within the group
        search = 0 if m <= BRANCHLESS_BINS else (1 if m <= BRANCHLESS_MAX else 2)
        if search != 0:
            cumul[0] = 0
            for i in range(m):
                cumul[i + 1] = cumul[i] + bincnt[i]
        for j in range(steps):
            t = frames[j] if sparse else j
            if nz > 1:
                # find the bin whose scaled cumulative range holds code by
                # multiplications (code >= k * r <=> code // r >= k) instead of a
                # division; the bins are sorted by count, so this usually stops at once
                r = _scale(rng, left, rec)
                if search == 1:
                    # count the cumulative bounds at or below the target without a branch per bin
                    # (the same bin as the search below finds), then take one frame off the bin
                    i = 0
                    for jj in range(1, m):
                        i += cumul[jj] * r <= code
                    cum = cumul[i]
                    for jj in range(1, m + 1):
                        cumul[jj] -= jj > i
                elif search == 2:  # the same count, over every fourth bound, then within the group
                    g4 = 0
                    for jj in range(4, m, 4):
                        g4 += cumul[jj] * r <= code
                    i = 4 * g4
                    for jj in range(i + 1, min(i + 4, m)):
                        i += cumul[jj] * r <= code
                    cum = cumul[i]
                    for jj in range(1, m + 1):
                        cumul[jj] -= jj > i
                else:
                    i = 0
                    cum = np.int64(0)
                    while i < m - 1 and (cum + bincnt[i]) * r <= code:
                        cum += bincnt[i]
                        i += 1
                if bincnt[i] == 0:  # only on corrupted input (code beyond the range)
                    return CORRUPT
                code -= cum * r
                rng = bincnt[i] * r
                # one byte in without a branch (the usual case), more in the loop
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
            if s == K:
                code, rng, ipos, e = _dec_number(code, rng, ipos, inp, freq, tot, ESC_CTX)
                value = emin + e
                if value < vmin or value > vmax or (value - base >= 0 and value - base < K):
                    return CORRUPT
            else:
                value = base + s
            if events:
                c = value - base
                if c < 0:  # only on corrupted input (an escaped value below the chunk's minimum)
                    return CORRUPT
                if ne + c >= cap:  # room for the write at ne below even when c == 0
                    return NEED_SPACE
                # the first electron is written whether or not there is one (then it is not
                # counted, and the next overwrites it): no branch on whether the value is 0
                ev_t[ne] = t
                ev_p[ne] = p
                for q in range(1, c):
                    ev_t[ne + q] = t
                    ev_p[ne + q] = p
                ne += c
                counts[t] += c
            else:
                out[t, p] = value ^ flip
    if ipos != inp.size:
        return CORRUPT
    return ne


@njit(cache=True, inline="always")
def _append(ev_t, ev_p, counts, ne, t, p, c):
    """Append ``c`` electrons at pixel ``p`` of frame ``t``; return the new number of electrons."""
    for _ in range(c):
        ev_t[ne] = t
        ev_p[ne] = p
        ne += 1
    counts[t] += c
    return ne


@njit(cache=True, nogil=True)
def scatter_events(ev_t, ev_p, counts, n_events, indices):
    """CSR events from pixel-major (frame, pixel) pairs: fills ``indices`` frame by frame, returns the offsets.

    ``counts`` are the electrons of each frame (their sum is ``n_events``, the
    size of ``indices``); within a frame the pixels stay in increasing order.
    """
    n_frames = counts.size
    offsets = np.zeros(n_frames + 1, dtype=np.int64)
    for f in range(n_frames):
        offsets[f + 1] = offsets[f] + counts[f]
    cursor = offsets[:-1].copy()
    for i in range(n_events):
        t = ev_t[i]
        indices[cursor[t]] = ev_p[i]
        cursor[t] += 1
    return offsets
