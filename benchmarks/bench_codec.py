"""Benchmark of the per-pixel histogram codec against general-purpose lossless codecs.

Run from the repository root::

    python3 benchmarks/bench_codec.py [--quick] [--out benchmarks/_work/codec.md]

Data: simulated counted 4D-STEM (Poisson frames of a bright-field disc with a
dark-field falloff whose contrast varies over the scan; mean 0.01 / 0.1 / 1
e- per pixel per frame; uint16) and the real files in ../shared/data (Merlin;
ARINA, which is all zeros, as a format sanity row).  Every codec compresses
the same chunks (whole frames, a tile of scan positions); sizes include every
header.  Bits per pixel are compared with the per-pixel empirical entropy of
each chunk (sum over pixels of frames x H(pixel's histogram)) and, for the
simulations, with the true source entropy (Poisson with the known rate).
Speeds: MB/s of raw input per core (median of 5 warm runs, one thread), and
a 2-worker LocalCluster writing and reading a zarr store.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# -- data ---------------------------------------------------------------------


def rates(scan=(32, 32), det=(128, 128), dose=0.1, r_bf=20.0):
    """Poisson rate per pixel and frame: a BF disc and a DF falloff, scan-dependent contrast."""
    ky, kx = np.mgrid[: det[0], : det[1]]
    r = np.hypot(ky - det[0] / 2 + 0.3, kx - det[1] / 2 - 0.2)
    bf = (r < r_bf).astype(float)
    df = 0.05 * np.exp(-np.maximum(r - r_bf, 0) / 25.0) * (r >= r_bf)
    sy, sx = np.mgrid[: scan[0], : scan[1]]
    contrast = 1 + 0.5 * np.cos(2 * np.pi * sy / 8)[..., None, None] * np.cos(2 * np.pi * sx / 8)[..., None, None]
    lam = bf + df * contrast  # (sy, sx, ky, kx)
    return lam * (dose / lam.mean())


def simulate(dose, scan=(32, 32), det=(128, 128), seed=0):
    lam = rates(scan, det, dose)
    return np.random.default_rng(seed).poisson(lam).astype(np.uint16), lam


def poisson_entropy_bits(lam):
    """Sum of the entropies of independent Poisson variables with rates ``lam`` (bits)."""
    from scipy.stats import poisson

    flat = lam.ravel()
    kmax = int(flat.max() + 12 * np.sqrt(flat.max()) + 20)
    total = 0.0
    for start in range(0, flat.size, 1 << 16):
        part = flat[start : start + (1 << 16)]
        pm = poisson.pmf(np.arange(kmax)[:, None], part[None, :])
        with np.errstate(divide="ignore", invalid="ignore"):
            total += float(-np.where(pm > 0, pm * np.log2(pm), 0.0).sum())
    return total


def real_files():
    out = []
    try:
        from rsciio.quantumdetector import file_reader
    except ImportError:
        return out
    for path in sorted(glob.glob(str(SHARED / "merlin" / "*.mib"))):
        data = np.asarray(file_reader(path, lazy=False)[0]["data"])
        out.append((f"Merlin {Path(path).stem}", data.astype(data.dtype.newbyteorder("="))))
    arina = SHARED / "arina" / "test_00_data_000001.h5"
    if arina.exists():
        import h5py
        import hdf5plugin  # noqa: F401  (bitshuffle filter)

        with h5py.File(arina) as h:
            frames = h["entry/data/data"][...]
        out.append(("ARINA test_00 (all zeros)", frames.reshape(4, 4, *frames.shape[-2:])))
    return out


def chunks_of(x, tile):
    ny, nx = x.shape[:2]
    for y in range(0, ny, tile[0]):
        for xx in range(0, nx, tile[1]):
            yield np.ascontiguousarray(x[y : y + tile[0], xx : xx + tile[1]])


def empirical_entropy_bits(chunk):
    """Per-pixel empirical entropy of one chunk, in bits (NumPy, independent of the codec)."""
    frames = chunk.reshape(-1, chunk.shape[-2] * chunk.shape[-1]).astype(np.int64)
    frames = frames - frames.min()
    n = frames.shape[0]
    top = int(frames.max()) + 1
    if top <= 4096:
        counts = np.zeros((top, frames.shape[1]), dtype=np.int64)
        np.add.at(counts, (frames, np.broadcast_to(np.arange(frames.shape[1]), frames.shape)), 1)
        c = counts[counts > 0].astype(float)
        return float((c * np.log2(n / c)).sum())
    total = 0.0
    for col in frames.T:
        _, c = np.unique(col, return_counts=True)
        total += float((c * np.log2(n / c)).sum())
    return total


# -- codecs -------------------------------------------------------------------


def codecs(dtype):
    import numcodecs
    from numcodecs import Blosc, Zstd

    from stemdask.codecs.histogram import decode_chunk, encode_chunk

    numcodecs.blosc.set_nthreads(1)
    typesize = np.dtype(dtype).itemsize
    bz = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE, typesize=typesize)
    bl = Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE, typesize=typesize)
    z19 = Zstd(level=19)

    def enc_png(c):
        import io

        from PIL import Image

        frames = c.reshape(-1, *c.shape[-2:])
        parts = []
        for f in frames:
            if f.dtype.itemsize > 2:
                return None
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(f, dtype=f.dtype.newbyteorder("<"))).save(
                buf, format="PNG", compress_level=9
            )
            parts.append(buf.getvalue())
        return parts

    def dec_png(parts, shape, dt):
        import io

        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(p))) for p in parts]).astype(dt).reshape(shape)

    return {
        "histogram (stemdask)": (lambda c: encode_chunk(c), lambda b, s, d: decode_chunk(b)),
        "gzip -9": (
            lambda c: zlib.compress(c.tobytes(), 9),
            lambda b, s, d: np.frombuffer(zlib.decompress(b), d).reshape(s),
        ),
        "zstd -19": (lambda c: z19.encode(c.tobytes()), lambda b, s, d: np.frombuffer(z19.decode(b), d).reshape(s)),
        "blosc zstd+bitshuffle": (lambda c: bz.encode(c), lambda b, s, d: np.frombuffer(bz.decode(b), d).reshape(s)),
        "bitshuffle+LZ4 (blosc)": (lambda c: bl.encode(c), lambda b, s, d: np.frombuffer(bl.decode(b), d).reshape(s)),
        "PNG -9 (per frame)": (enc_png, dec_png),
    }


def size_of(encoded):
    if encoded is None:
        return None
    if isinstance(encoded, list):
        return sum(len(p) for p in encoded)
    return len(encoded)


def median_time(fn, runs):
    fn()  # warm-up (JIT, allocations)
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def compression_rows(label, x, tile, lam=None, time_it=False, runs=5):
    """bits/pixel of every codec on the chunks of x; speeds on the first chunk."""
    from stemdask.codecs.histogram import decode_chunk, encode_chunk

    table = codecs(x.dtype)
    chunks = list(chunks_of(x, tile))
    pixels = x.size
    ent = sum(empirical_entropy_bits(c) for c in chunks) / pixels
    rows = []
    for name, (enc, dec) in table.items():
        sizes = [size_of(enc(c)) for c in chunks]
        if any(s is None for s in sizes):
            continue
        bpp = 8 * sum(sizes) / pixels
        row = {
            "data": label,
            "codec": name,
            "bpp": bpp,
            "entropy": ent,
            "true_entropy": None if lam is None else poisson_entropy_bits(lam) / pixels,
        }
        if name.startswith("histogram"):
            for c in chunks:  # every chunk round-trips exactly
                assert np.array_equal(decode_chunk(encode_chunk(c)), c)
        if time_it:
            c = chunks[0]
            e = enc(c)
            te, ce = median_time(lambda: enc(c), runs)
            td, cd = median_time(lambda: dec(e, c.shape, c.dtype), runs)
            row.update(
                enc_mbs=c.nbytes / 1e6 / te,
                dec_mbs=c.nbytes / 1e6 / td,
                enc_cpu_mbs=c.nbytes / 1e6 / ce,
                dec_cpu_mbs=c.nbytes / 1e6 / cd,
            )
        rows.append(row)
    if time_it and x.dtype == np.uint16 and int(x.max()) < 256:
        # the same counts stored as uint8: half the bytes, the same symbols to code
        c = chunks[0].astype(np.uint8)
        e = encode_chunk(c)
        te, ce = median_time(lambda: encode_chunk(c), runs)
        td, cd = median_time(lambda: decode_chunk(e), runs)
        rows.append(
            {
                "data": label,
                "codec": "histogram, same counts as uint8",
                "bpp": rows[0]["bpp"] / 2,
                "entropy": ent / 2,
                "true_entropy": rows[0]["true_entropy"] and rows[0]["true_entropy"] / 2,
                "enc_mbs": c.nbytes / 1e6 / te,
                "dec_mbs": c.nbytes / 1e6 / td,
                "enc_cpu_mbs": c.nbytes / 1e6 / ce,
                "dec_cpu_mbs": c.nbytes / 1e6 / cd,
                "extra": True,
            }
        )
    return rows


def shared_model_rows(dose, runs=5):
    """Small chunks (8 frames): self-contained histograms vs a model fitted on another scan."""
    from stemdask.codecs.histogram import HistogramModel, decode_chunk, encode_chunk

    x, lam = simulate(dose, scan=(16, 16), seed=11)
    train, _ = simulate(dose, scan=(16, 16), seed=12)
    model = HistogramModel.fit(train)
    chunks = list(chunks_of(x, (2, 4)))
    local = sum(len(encode_chunk(c)) for c in chunks) * 8 / x.size
    shared = 0
    for c in chunks:
        b = encode_chunk(c, model=model)
        assert np.array_equal(decode_chunk(b, model=model), c)
        shared += len(b)
    best_peer = min(
        8 * sum(size_of(enc(c)) or 1 << 60 for c in chunks) / x.size
        for name, (enc, _) in codecs(x.dtype).items()
        if not name.startswith("histogram")
    )
    return {
        "dose": dose,
        "local": local,
        "shared": shared * 8 / x.size,
        "peer": best_peer,
        "true_entropy": poisson_entropy_bits(lam) / x.size,
        "model_bytes": len(str(model.to_json())),
    }


def cluster_rows(x, tile, tmp):
    """Write and read a zarr store on a 2-worker LocalCluster: histogram vs blosc, same run."""
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    from stemdask.codecs.histogram import HistogramCodec

    rows = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        arr = client.persist(da.from_array(x, chunks=(*tile, *x.shape[2:])))
        choices = {
            "histogram (stemdask)": dict(serializer=HistogramCodec(), compressors=None),
            "blosc zstd+bitshuffle": dict(
                compressors=[
                    zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle=zarr.codecs.BloscShuffle.bitshuffle)
                ]
            ),
        }
        for name, kw in choices.items():
            writes, reads = [], []
            for i in range(6):
                path = str(Path(tmp) / f"c{i}.zarr")
                z = zarr.create_array(
                    path, shape=x.shape, chunks=(*tile, *x.shape[2:]), dtype=x.dtype, overwrite=True, **kw
                )
                t0 = time.perf_counter()
                arr.store(z, lock=False, compute=True)
                writes.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                client.compute(da.from_zarr(path).sum(axis=(2, 3))).result()
                reads.append(time.perf_counter() - t0)
            rows.append(
                {
                    "codec": name,
                    "write_mbs": x.nbytes / 1e6 / statistics.median(writes[1:]),
                    "read_mbs": x.nbytes / 1e6 / statistics.median(reads[1:]),
                }
            )
    return rows


# -- report -------------------------------------------------------------------


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def speed(row, kind):
    if row.get(f"{kind}_mbs") is None:
        return "–"
    return f"{row[f'{kind}_mbs']:.0f} ({row[f'{kind}_cpu_mbs']:.0f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller simulated scans (for a smoke run)")
    parser.add_argument("--out", default=None, help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    scan = (16, 16) if args.quick else (32, 32)
    tile = (16, 16)  # 256 frames per chunk
    lines = [
        f"stemdask histogram codec benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average at start {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}",
        "",
    ]
    rows = []
    for dose in (0.01, 0.1, 1.0):
        x, lam = simulate(dose, scan=scan)
        rows += compression_rows(f"simulated {dose:g} e⁻/px, {x.shape}", x, tile, lam=lam, time_it=True)
    for label, x in real_files():
        rows += compression_rows(f"{label}, {x.shape} {x.dtype}", x, x.shape[:2], time_it=False)

    lines += [
        "Speeds: MB of raw input per second of wall time, and (in brackets) per second of the thread's "
        "CPU time, which is less disturbed by other jobs on a shared machine; one thread, first chunk, "
        "median of 5 warm runs. The uint8 row codes the same counts stored as uint8 "
        "(the same compressed size, half the raw bytes).",
        "",
        "| data | codec | bits/pixel | × vs histogram | vs empirical entropy | vs true entropy "
        "| encode MB/s/core | decode MB/s/core |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_data: dict[str, list] = {}
    for r in rows:
        by_data.setdefault(r["data"], []).append(r)
    summary = []
    for data, rs in by_data.items():
        hist = next(r for r in rs if r["codec"].startswith("histogram"))
        for r in rs:
            if r.get("extra"):
                lines.append(f"| {data} | {r['codec']} | same size | | | | {speed(r, 'enc')} | {speed(r, 'dec')} |")
                continue
            ratio = r["bpp"] / hist["bpp"] if hist["bpp"] else None
            over = (r["bpp"] / r["entropy"] - 1) * 100 if r["entropy"] else None
            over_true = (r["bpp"] / r["true_entropy"] - 1) * 100 if r["true_entropy"] else None
            lines.append(
                f"| {data} | {r['codec']} | {fmt(r['bpp'], '.4f')} | {fmt(ratio, '.2f')} "
                f"| {fmt(over, '+.1f')} % | {fmt(over_true, '+.1f')} % "
                f"| {speed(r, 'enc')} | {speed(r, 'dec')} |"
            )
        peers = [r for r in rs if not r["codec"].startswith("histogram")]
        best = min(peers, key=lambda r: r["bpp"])
        summary.append(
            f"* {data}: best general codec {best['codec']} {best['bpp']:.4f} bits/pixel; histogram "
            f"{hist['bpp']:.4f} ({best['bpp'] / hist['bpp']:.2f}× smaller)"
            if hist["bpp"]
            else f"* {data}: histogram {hist['bpp']:.4f} bits/pixel, best general {best['bpp']:.4f}"
        )
    lines += ["", *summary, ""]

    lines += [
        "Small chunks (2×4 scan positions = 8 frames of 128×128, uint16): self-contained vs a shared "
        "model fitted on another simulated scan (HistogramModel.fit)",
        "",
        "| dose e⁻/px | self-contained | shared model | best general codec | true entropy | model JSON bytes |",
        "|---|---|---|---|---|---|",
    ]
    for dose in (0.01, 0.1, 1.0):
        s = shared_model_rows(dose)
        lines.append(
            f"| {dose:g} | {s['local']:.4f} | {s['shared']:.4f} | {s['peer']:.4f} "
            f"| {s['true_entropy']:.4f} | {s['model_bytes']} |"
        )
    lines.append("")

    from stemdask.codecs.histogram import encode_chunk

    lines += [
        "Chunk size (frames per chunk = scan tile) against bits/pixel, histogram codec, "
        f"simulated scan {scan + (128, 128)}",
        "",
        "| dose e⁻/px | frames per chunk | bits/pixel | vs empirical entropy | vs true entropy |",
        "|---|---|---|---|---|",
    ]
    for dose in (0.01, 0.1, 1.0):
        x, lam = simulate(dose, scan=scan)
        true = poisson_entropy_bits(lam) / x.size
        for t in ((8, 8), (16, 16), (16, 32), (32, 32)):
            if t[0] > scan[0] or t[1] > scan[1]:
                continue
            cs = list(chunks_of(x, t))
            bpp = 8 * sum(len(encode_chunk(c)) for c in cs) / x.size
            ent = sum(empirical_entropy_bits(c) for c in cs) / x.size
            lines.append(
                f"| {dose:g} | {t[0] * t[1]} | {bpp:.4f} | {(bpp / ent - 1) * 100:+.1f} % "
                f"| {(bpp / true - 1) * 100:+.1f} % |"
            )
    lines.append("")

    import tempfile

    x, _ = simulate(1.0, scan=scan)
    (ROOT / "benchmarks" / "_work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks" / "_work") as tmp:
        crow = cluster_rows(x, (16, 16), tmp)
    lines += [
        f"2-worker LocalCluster (1 thread each), zarr store of {x.nbytes / 1e6:.0f} MB (dose 1, "
        f"256-frame chunks), median of 5 after a warm-up",
        "",
        "| codec | write MB/s | read MB/s |",
        "|---|---|---|",
    ]
    lines += [f"| {r['codec']} | {r['write_mbs']:.0f} | {r['read_mbs']:.0f} |" for r in crow]
    lines += ["", f"load average at end {os.getloadavg()[0]:.2f}"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
