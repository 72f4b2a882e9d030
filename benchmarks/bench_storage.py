"""Storage benchmark: codec choice, histogram decode, raw read and the write path (issue 13, storage half).

Run from the repository root::

    python3 benchmarks/bench_storage.py [--quick] [--out benchmarks/_work/storage.md]

Single-core figures are measured first, before any LocalCluster starts, so
that no ``MALLOC_TRIM_THRESHOLD_`` leaked by distributed's Nanny affects
them; the variable is removed again after the cluster closes. Speeds are MB
of raw (uncompressed) data per second of the thread's CPU time (steadier
than wall time on a shared machine), median of several runs; the load
average is printed with the results.

Rows:

* codecs on one inner chunk of simulated counted data (0.1 and 1 e-/px,
  256 frames of 128x128 uint16) and on the real Merlin files in
  ../shared/data, each followed by a crc32c of the compressed bytes (what
  the inner-chunk pipeline will carry, zarr.codecs.Crc32cCodec);
* histogram codec decode, format version 1 against 2, dense and straight
  to events;
* raw read of an uncompressed sharded store with zarr-python, one thread,
  against reading the same bytes from the page cache (``np.fromfile``), for
  zarr's default settings and a tuned ``zarr.config``;
* ``stemdask.save`` on a 2-worker LocalCluster with the default codec;
* ``--parts events``: a virtual image from a histogram-coded counted store
  opened as events (each chunk decoded straight into an EventBlock) against
  the same store opened dense, in GB/s of equivalent dense bytes: per core
  (dask's sync scheduler, process CPU time), and wall time with dask's
  threads (2) and on a 2-worker LocalCluster.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data next to the checkout (or next to the folder of worktrees)
SHARED = next(
    (p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").exists()), ROOT
)
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_median(fn, repeat: int) -> float:
    """Median thread CPU seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def process_median(fn, repeat: int) -> float:
    """Median process CPU seconds (all threads) of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def wall_median(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def candidate_codecs():
    import numcodecs
    from numcodecs import blosc

    # one core: blosc's own threads would escape thread_time
    blosc.use_threads = False
    blosc.set_nthreads(1)
    out = {"none": None}
    for cname, levels in (("lz4", (1, 5)), ("zstd", (1, 3, 5))):
        for shuffle, sname in ((numcodecs.Blosc.BITSHUFFLE, "bit"), (numcodecs.Blosc.SHUFFLE, "byte")):
            for level in levels:
                out[f"blosc {cname}-{level} {sname}shuffle"] = numcodecs.Blosc(cname, level, shuffle, blocksize=0)
    return out


def codec_rows(samples, repeat):
    import google_crc32c

    rows = []
    for label, chunk in samples:
        raw = np.ascontiguousarray(chunk)
        for name, codec in candidate_codecs().items():
            enc = raw.tobytes() if codec is None else codec.encode(raw)
            t_crc = cpu_median(lambda enc=enc: google_crc32c.value(enc), repeat)
            if codec is None:
                t_enc = t_dec = 0.0
            else:
                t_enc = cpu_median(lambda c=codec: c.encode(raw), repeat)
                t_dec = cpu_median(lambda c=codec, e=enc: c.decode(e), repeat)
                assert np.array_equal(np.frombuffer(codec.decode(enc), raw.dtype).reshape(raw.shape), raw)
            mb = raw.nbytes / 1e6
            rows.append(
                (label, name, raw.nbytes / len(enc), mb / max(t_enc + t_crc, 1e-9), mb / max(t_dec + t_crc, 1e-9))
            )
    return rows


def histogram_rows(repeat):
    from bench_codec import simulate

    from stemdask.codecs.histogram import decode_chunk, decode_chunk_events, encode_chunk

    rows = []
    for dose in (0.01, 0.1, 1.0):
        x, _ = simulate(dose, scan=(16, 16), det=(128, 128))
        sizes, speeds = {}, {}
        for version in (1, 2):
            data = encode_chunk(x, format_version=version)
            assert np.array_equal(decode_chunk(data), x)
            sizes[version] = len(data)
            speeds[version] = x.nbytes / 1e6 / cpu_median(lambda d=data: decode_chunk(d), repeat)
        t_enc = cpu_median(lambda: encode_chunk(x), repeat)
        ev = x.nbytes / 1e6 / cpu_median(lambda d=data: decode_chunk_events(d), repeat)
        rows.append((dose, sizes[1], sizes[2], speeds[1], speeds[2], ev, x.nbytes / 1e6 / t_enc))
    return rows


def raw_read_rows(tmp, repeat, quick):
    """Uncompressed sharded store, read whole by one thread: zarr defaults vs tuned settings vs page cache."""
    import zarr

    shape = (16, 32, 128, 128) if quick else (32, 64, 128, 128)  # 128 / 512 MiB uint16
    x = np.random.default_rng(0).integers(0, 4, size=shape, dtype=np.uint16)
    path = os.path.join(tmp, "raw.zarr")
    z = zarr.create_array(
        path, shape=shape, chunks=(16, 16, 128, 128), shards=(16, 32, 128, 128), dtype="uint16", compressors=None
    )
    z[:] = x
    flat = os.path.join(tmp, "raw.npy")
    np.save(flat, x)
    rows = [
        ("page cache (np.load of the same bytes as .npy)", x.nbytes / 1e6 / cpu_median(lambda: np.load(flat), repeat))
    ]
    settings = {
        "zarr defaults": {},
        "async.concurrency=64, threading.max_workers=1": {"async.concurrency": 64, "threading.max_workers": 1},
        "codec_pipeline.batch_size=64": {"codec_pipeline.batch_size": 64},
    }
    for label, cfg in settings.items():
        with zarr.config.set(cfg):
            arr = zarr.open_array(path, mode="r")
            assert np.array_equal(arr[:], x)
            # wall time: zarr reads on its own event-loop thread, which thread_time would not see
            rows.append((label, x.nbytes / 1e6 / wall_median(lambda a=arr: a[:], repeat)))
    return rows


def write_rows(tmp, repeat, quick):
    import dask.array as da
    from bench_codec import simulate
    from distributed import Client, LocalCluster

    import stemdask
    from stemdask.codecs import DEFAULT_CODEC

    x, _ = simulate(1.0, scan=(32, 32) if quick else (64, 64), det=(128, 128))
    rows = []
    had = "MALLOC_TRIM_THRESHOLD_" in os.environ
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        arr = client.persist(da.from_array(x, chunks=(16, 32, 128, 128)))
        data = stemdask.from_array(arr)
        for codec in dict.fromkeys([DEFAULT_CODEC, "none"]):
            times = []
            for i in range(repeat):
                path = os.path.join(tmp, f"w{codec}{i}.zarr")
                t0 = time.perf_counter()
                stemdask.save(data, path, codec=codec)
                times.append(time.perf_counter() - t0)
            back = stemdask.open_dataset(path)
            assert np.array_equal(back.data.compute(), x)
            rows.append((codec, x.nbytes / 1e6 / statistics.median(times)))
    if not had:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return rows


def events_store_rows(tmp, repeat, quick):
    """Virtual image from a histogram-coded counted store: opened as events vs opened dense, wall GB/s."""
    import dask
    from bench_codec import rates
    from distributed import Client, LocalCluster

    import stemdask
    from stemdask import events, imaging

    scan, det = ((64, 64) if quick else (128, 128)), (128, 128)
    rows = []
    had = "MALLOC_TRIM_THRESHOLD_" in os.environ
    for dose in (0.01, 0.1):
        # simulated a scan row block at a time (the rates alone of a whole scan are 8 bytes a pixel)
        rng = np.random.default_rng(0)
        lam = rates((16, scan[1]), det, dose)
        frames = np.concatenate([rng.poisson(lam).astype(np.uint16) for _ in range(scan[0] // 16)])
        path = stemdask.save(stemdask.from_array(frames), os.path.join(tmp, f"h{dose}.zarr"), codec="histogram")
        dense = stemdask.open_dataset(path)
        mask = imaging.detectors.annulus(dense, 20.0, 60.0)
        ref = (frames * mask.values).sum(axis=(2, 3))
        del frames
        gb = dense.nbytes / 1e9
        counted = stemdask.open_dataset(path, representation="events")
        assert events.is_counted(counted)

        def run(data):
            return imaging.virtual_image(data, mask).values

        # per core, steady under load: process CPU time (zarr decodes on its own threads) with dask's sync scheduler
        with dask.config.set(scheduler="sync"):
            for kind, data in (("events", counted), ("dense", dense)):
                rows.append((dose, "sync, process CPU time", kind, gb / process_median(lambda d=data: run(d), repeat)))
        for label in ("threads (2)", "2-worker LocalCluster"):
            if label.startswith("threads"):
                ctx = dask.config.set(scheduler="threads", num_workers=2)
                cluster = client = None
            else:
                cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
                client = Client(cluster)
                ctx = dask.config.set(scheduler=client.get)
            with ctx:
                for kind, data in (("events", counted), ("dense", dense)):
                    np.testing.assert_allclose(run(data), ref, rtol=1e-12)
                    t = wall_median(lambda d=data: run(d), repeat)
                    rows.append((dose, label, kind, gb / t))
            if client is not None:
                client.close()
                cluster.close()
    if not had:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return rows


def merlin_samples():
    out = []
    try:
        from rsciio.quantumdetector import file_reader
    except ImportError:
        return out
    for path in sorted(glob.glob(str(SHARED / "merlin" / "*.mib"))):
        data = np.asarray(file_reader(path, lazy=False)[0]["data"])
        out.append((f"Merlin {Path(path).stem[:24]}", data.astype(data.dtype.newbyteorder("="))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--parts", default="codecs,histogram,read,write,events", help="comma-separated subset (events: see above)"
    )
    args = parser.parse_args()
    from bench_codec import simulate

    repeat = 3 if args.quick else 5
    lines = [f"load average at start {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores", ""]
    parts = set(args.parts.split(","))
    samples = [(f"simulated {d} e-/px", simulate(d, scan=(16, 16), det=(128, 128))[0]) for d in (0.1, 1.0)]
    samples += merlin_samples()
    lines += ["| data | codec (+ crc32c) | ratio | encode MB/s/core | decode MB/s/core |", "|---|---|---|---|---|"]
    for label, name, ratio, enc, dec in codec_rows(samples, repeat) if "codecs" in parts else []:
        lines.append(f"| {label} | {name} | {ratio:.2f} | {enc:.0f} | {dec:.0f} |")
    lines += [
        "",
        "| dose e-/px | bytes v1 | bytes v2 | v2/v1 size | decode v1 | decode v2 | v2 to events | encode v2 |",
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for dose, s1, s2, d1, d2, ev, enc in histogram_rows(repeat) if "histogram" in parts else []:
        lines.append(f"| {dose} | {s1} | {s2} | {s2 / s1 - 1:+.2%} | {d1:.0f} | {d2:.0f} | {ev:.0f} | {enc:.0f} |")
    with tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp:
        lines += ["", "| raw read, one thread | MB/s |", "|---|---|"]
        if "read" in parts:
            lines += [f"| {label} | {v:.0f} |" for label, v in raw_read_rows(tmp, repeat, args.quick)]
        lines += ["", "| stemdask.save, 2-worker LocalCluster (wall) | MB/s |", "|---|---|"]
        if "write" in parts:
            lines += [f"| {codec} | {v:.0f} |" for codec, v in write_rows(tmp, 3, args.quick)]
        if "events" in parts:
            lines += [
                "",
                "| dose e-/px | scheduler | histogram store opened as | virtual image, GB/s of dense bytes |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {d} | {sched} | {kind} | {v:.2f} |" for d, sched, kind, v in events_store_rows(tmp, 3, args.quick)
            ]
    lines += ["", f"load average at end {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
