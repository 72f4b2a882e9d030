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
  to events, and encode; with ``--histogram-baseline REV`` also the decoders
  and encoder of the kernels of git revision REV on the same chunks, timed in
  the same rounds (interleaved, so their ratio holds on a loaded machine);
* raw read of an uncompressed sharded store with zarr-python, one thread,
  against reading the same bytes from the page cache (``np.fromfile``), for
  zarr's default settings and a tuned ``zarr.config``, and through
  stemdask's readers of local stores (``stemdask.io.local_read``);
* ``--parts profile``: one default-codec shard written and read, and one
  uncompressed shard read by each reader, against their parts by hand;
* ``stemdask.save``, convert and ``DatasetWriter`` on a 2-worker LocalCluster (data persisted on the
  workers first, a warm-up save, 2 or 4 shards per worker; see ``write_rows``);
* ``--parts events``: a virtual image from a histogram-coded counted store
  opened as events (each chunk decoded straight into an EventBlock) against
  the same store opened dense, in GB/s of equivalent dense bytes: per core
  (dask's sync scheduler, process CPU time), and wall time with dask's
  threads (2) and on a 2-worker LocalCluster.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
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
from _timing import interleaved_medians  # noqa: E402  (a sibling module of this script)


def cpu_median(fn, repeat: int) -> float:
    """Median thread CPU seconds of ``fn()`` after one warm-up call."""
    return interleaved_medians([fn], repeat, clock=time.thread_time)[0]


def process_median(fn, repeat: int) -> float:
    """Median process CPU seconds (all threads) of ``fn()`` after one warm-up call."""
    return interleaved_medians([fn], repeat, clock=time.process_time)[0]


def wall_median(fn, repeat: int) -> float:
    """Median wall seconds of ``fn()`` after one warm-up call."""
    return interleaved_medians([fn], repeat)[0]


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


def _baseline_kernels(rev, folder):
    """The histogram kernels of git revision ``rev``, imported as a module of their own (numba cache in ``folder``)."""
    import importlib
    import subprocess

    src = subprocess.run(
        ["git", "show", f"{rev}:stemdask/codecs/_histogram_kernels.py"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    name = "_histogram_kernels_" + "".join(c if c.isalnum() else "_" for c in rev)
    Path(folder, name + ".py").write_bytes(src)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def histogram_rows(repeat, baseline=None, folder=None):
    """Histogram codec on one simulated chunk per dose: sizes, decode (dense, to events), encode, MB/s per CPU-s.

    With ``baseline`` (a git revision) the decoders of that revision's kernels
    run in the same rounds as this checkout's, on the same bytes (the format
    is the same), and their speeds come back too (else None).
    """
    from bench_codec import simulate

    from stemdask.codecs import histogram as hc

    old = None if baseline is None else _baseline_kernels(baseline, folder)
    current = hc._k

    def with_kernels(kernels, fn, data):
        def call():
            hc._k = kernels
            try:
                return fn(data)
            finally:
                hc._k = current

        return call

    rows = []
    for dose in (0.01, 0.1, 1.0):
        x, _ = simulate(dose, scan=(16, 16), det=(128, 128))
        mb = x.nbytes / 1e6
        v1 = hc.encode_chunk(x, format_version=1)
        v2 = hc.encode_chunk(x)
        for data in (v1, v2):
            assert np.array_equal(hc.decode_chunk(data), x)
        fns = [
            lambda: hc.decode_chunk(v1),
            lambda: hc.decode_chunk(v2),
            lambda: hc.decode_chunk_events(v2),
            lambda: hc.encode_chunk(x),
        ]
        if old is not None:
            assert np.array_equal(with_kernels(old, hc.decode_chunk, v2)(), x)
            fns += [
                with_kernels(old, hc.decode_chunk, v2),
                with_kernels(old, hc.decode_chunk_events, v2),
                with_kernels(old, hc.encode_chunk, x),
            ]
        t = interleaved_medians(fns, repeat, clock=time.thread_time)
        speeds = [mb / v for v in t]
        rows.append((dose, len(v1), len(v2), *speeds[:4], *(speeds[4:] if old is not None else (None,) * 3)))
    return rows


def _cpu_wall_median(fn, repeat: int) -> tuple[float, float]:
    """Median (wall, CPU of all threads of this process) seconds of ``fn()`` after a warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def raw_read_rows(tmp, repeat, quick):
    """Uncompressed sharded store read whole: zarr's settings, zarrs, TensorStore, against the page cache.

    Returns (label, MB/s wall, MB per CPU-second of the process): zarr and
    zarrs decode on their own threads, so CPU time counts all of them; on a
    loaded machine it is the steadier figure.
    """
    import zarr

    from stemdask.codecs import DEFAULT_CODEC, resolve_codec, with_checksum
    from stemdask.io.local_read import READERS

    shape = (16, 32, 128, 128) if quick else (32, 64, 128, 128)  # 128 / 512 MiB uint16
    x = np.random.default_rng(0).poisson(1.0, size=shape).astype(np.uint16)
    flat = os.path.join(tmp, "raw.npy")
    np.save(flat, x)
    mb = x.nbytes / 1e6
    t_wall, t_cpu = _cpu_wall_median(lambda: np.load(flat), repeat)
    rows = [("page cache (np.load of the same bytes as .npy)", mb / t_wall, mb / t_cpu)]
    settings = {
        "zarr-python, defaults": {},
        "zarr-python, async.concurrency=64, threading.max_workers=1": {
            "async.concurrency": 64,
            "threading.max_workers": 1,
        },
        "zarr-python, codec_pipeline.batch_size=64": {"codec_pipeline.batch_size": 64},
    }
    if _has("zarrs"):
        zarrs = {"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}
        settings["zarrs, threading.max_workers=1"] = {**zarrs, "threading.max_workers": 1}
        settings["zarrs, defaults (all cores)"] = zarrs
    # what stemdask stores with codec="none" (crc32c only) and with the default codec
    for store_name, compressors in (
        ("none", [zarr.codecs.Crc32cCodec()]),
        (DEFAULT_CODEC, list(with_checksum(resolve_codec(DEFAULT_CODEC).compressors))),
    ):
        path = os.path.join(tmp, f"raw-{store_name}.zarr")
        z = zarr.create_array(
            path,
            shape=shape,
            chunks=(16, 16, 128, 128),
            shards=(16, 32, 128, 128),
            dtype="uint16",
            compressors=compressors,
        )
        z[:] = x
        for label, cfg in settings.items():
            with zarr.config.set(cfg):
                arr = zarr.open_array(path, mode="r")
                assert np.array_equal(arr[:], x)
                t_wall, t_cpu = _cpu_wall_median(lambda a=arr: a[:], repeat)
                rows.append((f"{store_name} store: {label}", mb / t_wall, mb / t_cpu))
        # zarr-python's pipeline reading through stemdask's stores (io/local_read): where the bytes come from
        for reader in ("numpy", "mmap"):
            arr = zarr.open_array(READERS[reader](path, read_only=True), mode="r")
            assert np.array_equal(arr[:], x)
            t_wall, t_cpu = _cpu_wall_median(lambda a=arr: a[:], repeat)
            rows.append((f"{store_name} store: zarr-python, stemdask reader {reader!r}", mb / t_wall, mb / t_cpu))
        if _has("tensorstore") and _has("ml_dtypes"):
            import tensorstore as ts

            spec = {
                "driver": "zarr3",
                "kvstore": {"driver": "file", "path": path},
                "context": {"data_copy_concurrency": {"limit": 1}, "file_io_concurrency": {"limit": 1}},
            }
            store = ts.open(spec).result()
            assert np.array_equal(store.read().result(), x)
            t_wall, t_cpu = _cpu_wall_median(lambda s=store: s.read().result(), repeat)
            rows.append((f"{store_name} store: TensorStore 0.1.86, 1 thread", mb / t_wall, mb / t_cpu))
    return rows


def shard_profile_rows(tmp, repeat):
    """Where the time of one shard goes, one process: zarr's write/read against its parts done by hand.

    One shard of 64x64 positions x 128x128 uint16 (134 MB, 16 inner chunks of 8 MiB),
    simulated at 1 e-/px, default codec (blosc lz4-1 bitshuffle + crc32c). Wall time
    (zarr runs codecs on its own threads), median of ``repeat`` after a warm-up.
    """
    import google_crc32c
    import numcodecs
    import zarr
    from bench_codec import simulate
    from numcodecs import blosc

    import stemdask.io.zarr_store as zs
    from stemdask.codecs import DEFAULT_CODEC, resolve_codec, with_checksum

    blosc.use_threads = False
    x = simulate(1.0, scan=(64, 64), det=(128, 128))[0]
    inner = (16, 16)
    tiles = [(slice(i, i + inner[0]), slice(j, j + inner[1])) for i in range(0, 64, 16) for j in range(0, 64, 16)]
    codec = numcodecs.Blosc("lz4", 1, numcodecs.Blosc.BITSHUFFLE, blocksize=0)
    compressors = list(with_checksum(resolve_codec(DEFAULT_CODEC).compressors))
    chunks = [np.ascontiguousarray(x[t]) for t in tiles]
    encoded = [codec.encode(c) for c in chunks]
    blob = os.path.join(tmp, "shard.bin")

    def write_file():
        with open(blob, "wb") as f:
            f.writelines(encoded)

    write_file()

    def timed(fn):
        """(wall, CPU of all threads of this process) seconds of ``fn()``: zarr codes on its own threads."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    def zarr_write(config):
        path = os.path.join(tmp, "prof.zarr")
        z = zarr.create_array(
            path,
            shape=x.shape,
            chunks=(*inner, 128, 128),
            shards=x.shape,
            dtype="uint16",
            compressors=compressors,
            overwrite=True,
        ).with_config(config)
        return timed(lambda: z.__setitem__(slice(None), x))

    def med(fn):
        fn()
        runs = [fn() for _ in range(repeat)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    def wall(fn):
        return med(lambda: timed(fn))

    out = [
        ("write: zarr, old config (write_empty_chunks=False)", med(lambda: zarr_write({"write_empty_chunks": False}))),
        ("write: zarr, new config (write_empty_chunks=True)", med(lambda: zarr_write(dict(zs.WRITE_ARRAY_CONFIG)))),
        (
            "write part: fill-value check of every chunk and the shard",
            # what zarr's NDBuffer.all_equal does: array_equal with the fill value broadcast
            wall(
                lambda: [np.array_equal(*np.broadcast_arrays(c, c.dtype.type(0)), equal_nan=True) for c in [*chunks, x]]
            ),
        ),
        (
            "write part: copy the inner chunks out of the block",
            wall(lambda: [np.ascontiguousarray(x[t]) for t in tiles]),
        ),
        ("write part: blosc lz4 encode (1 thread)", wall(lambda: [codec.encode(c) for c in chunks])),
        ("write part: crc32c of the encoded chunks", wall(lambda: [google_crc32c.value(e) for e in encoded])),
        ("write part: join the chunks into one shard buffer", wall(lambda: b"".join(encoded))),
        ("write part: write the shard file (page cache)", wall(write_file)),
    ]
    z = zarr.open_array(os.path.join(tmp, "prof.zarr"), mode="r")
    tile = zs._read_tile(z)
    target = np.empty_like(x)
    out += [
        ("read: zarr, whole shard", wall(lambda: z[:])),
        (
            f"read: zarr, one dask tile {tile} (x {64 // tile[0] * 64 // tile[1]})",
            wall(lambda: z[: tile[0], : tile[1]]),
        ),
        ("read part: read the shard file (page cache)", wall(lambda: open(blob, "rb").read())),
        ("read part: crc32c", wall(lambda: [google_crc32c.value(e) for e in encoded])),
        ("read part: blosc lz4 decode (1 thread)", wall(lambda: [codec.decode(e) for e in encoded])),
        (
            "read part: copy the chunks into the output",
            wall(lambda: [np.copyto(target[t], c) for t, c in zip(tiles, chunks)]),
        ),
    ]
    rows = []
    for label, (t_wall, t_cpu) in out:
        nbytes = x.nbytes if "dask tile" not in label else x.nbytes * tile[0] * tile[1] // x.shape[0] // x.shape[1]
        rows.append((label, nbytes / 1e6 / t_wall, nbytes / 1e6 / max(t_cpu, 1e-6), t_cpu * 1e3))
    return rows


def _simulated_on_workers(scan, tile, dose=1.0):
    """A simulated counted dataset made on the workers, one dask block per write tile (nothing sent from the client)."""
    import dask
    import dask.array as da
    from bench_codec import simulate

    rows = []
    for iy in range(0, scan[0], tile[0]):
        row = []
        for ix in range(0, scan[1], tile[1]):
            block = dask.delayed(lambda s: simulate(dose, scan=tile, det=(128, 128), seed=s)[0])(iy * scan[1] + ix)
            row.append(da.from_delayed(block, shape=(*tile, 128, 128), dtype=np.uint16))
        rows.append(row)
    return da.concatenate([da.concatenate(row, axis=1) for row in rows], axis=0)


def write_rows(tmp, repeat, quick):
    """save / convert / DatasetWriter on a 2-worker LocalCluster: zarr's old write config against the new one.

    What is timed is the write only: the data are made and persisted on the workers first (evenly,
    one block per shard), one untimed save warms the workers up (imports, first-task costs), and
    there are 2 (``--quick``: 537 MB) or 4 (1 GiB) shards per worker, so both workers stay busy.
    Each row gives wall MB/s, the median write task, MB per worker-CPU-second (user + system of
    both worker processes) and the client process's CPU (the scheduler runs there too).
    """
    from distributed import Client, LocalCluster, get_task_stream, wait

    import stemdask
    import stemdask.io.zarr_store as zs
    from stemdask.codecs import DEFAULT_CODEC
    from stemdask.io.pipeline import use_codec_pipeline

    scan = (128, 128) if quick else (256, 128)  # 537 MB / 1.07 GB uint16: 4 / 8 shards of 128 MiB
    shard = zs.storage_layout((*scan, 128, 128), 2)[1][:2]  # the default shard tile (32, 128)
    n_shards = math.ceil(scan[0] / shard[0]) * math.ceil(scan[1] / shard[1])
    tile = (64, 64)  # a tile that is not the shard's: save rechunks (copies, moves between workers)
    rows, profile = [], []
    had = "MALLOC_TRIM_THRESHOLD_" in os.environ
    configs = {"old (write_empty_chunks=False)": {"write_empty_chunks": False}, "new": dict(zs.WRITE_ARRAY_CONFIG)}
    pipelines = ["zarr"] + (["zarrs"] if _has("zarrs") else [])
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        arr = client.persist(_simulated_on_workers(scan, shard))
        wait(arr)
        x = arr.compute()
        datas = {
            f"data in shard tiles {shard}": stemdask.from_array(arr),
            f"data in {tile} tiles": stemdask.from_array(client.persist(arr.rechunk((*tile, 128, 128)))),
        }
        aligned, other = datas
        wait(datas[other].data)
        assert bool(da_equal(datas[other].data, arr))

        def same_on_workers(path):
            return bool(da_equal(stemdask.open_dataset(path).data, arr))

        npy = os.path.join(tmp, "source.npy")
        np.save(npy, x)
        saved = dict(zs.WRITE_ARRAY_CONFIG)
        warm = os.path.join(tmp, "warm.zarr")
        stemdask.save(datas[aligned], warm)  # untimed: imports and first-task costs on both workers
        shutil.rmtree(warm)
        times: dict = {}
        cases = [
            (c, cfg, pipe, aligned)
            for pipe in pipelines
            for c in dict.fromkeys([DEFAULT_CODEC, "none"])
            for cfg in configs
        ] + [(DEFAULT_CODEC, "new", "zarr", other)]

        def timed(key, fn):
            """Run ``fn()``; record its wall, worker CPU and client CPU seconds under ``key``."""
            cpu0, client0 = _workers_cpu(client), time.process_time()
            t0 = time.perf_counter()
            fn()
            times.setdefault(("save", *key), []).append(time.perf_counter() - t0)
            times.setdefault(("client", *key), []).append(time.process_time() - client0)
            times.setdefault(("cpu", *key), []).append(_workers_cpu(client) - cpu0)

        for rep in range(repeat):  # interleaved: every case sees the same load
            for codec, cfg, pipe, layout in cases:
                use_codec_pipeline(pipe, client=client)
                zs.WRITE_ARRAY_CONFIG.clear()
                zs.WRITE_ARRAY_CONFIG.update(configs[cfg])
                path = os.path.join(tmp, f"w{rep}.zarr")
                with get_task_stream() as stream:
                    timed((codec, cfg, pipe, layout), lambda: stemdask.save(datas[layout], path, codec=codec))
                tasks = [
                    s["stop"] - s["start"]
                    for t in stream.data
                    if "write_region" in str(t["key"])
                    for s in t["startstops"]
                    if s["action"] == "compute"
                ]
                times.setdefault(("task", codec, cfg, pipe, layout), []).append(statistics.median(tasks))
                if rep == repeat - 1 and cfg == "new":
                    assert same_on_workers(path)
                shutil.rmtree(path)
        zs.WRITE_ARRAY_CONFIG.clear()
        zs.WRITE_ARRAY_CONFIG.update(saved)
        use_codec_pipeline("zarr", client=client)
        del datas[other]  # the rechunked copy is not needed below: its memory goes back to the workers

        def row(label, codec, key, per_task=None):
            med = {k: statistics.median(times[(k, *key)]) for k in ("save", "cpu", "client")}
            task = statistics.median(times[("task", *key)]) if ("task", *key) in times else None
            rows.append(
                (
                    label,
                    codec,
                    x.nbytes / 1e6 / med["save"],
                    None if task is None else x.nbytes / n_shards / 1e6 / task,
                    None if key[0] == "writer" else x.nbytes / 1e6 / med["cpu"],  # writer: the client
                    med["client"] * 1e3,
                )
            )

        for codec, cfg, pipe, layout in cases:
            row(f"save, {pipe}, {cfg} config, {layout}", codec, (codec, cfg, pipe, layout))
        # the same data written by dask itself (da.to_zarr into an array with the same layout and codecs)
        import dask.array as da
        import zarr

        from stemdask.codecs import resolve_codec, with_checksum

        inner, shard_shape = zs.storage_layout(x.shape, 2)
        compressors = list(with_checksum(resolve_codec(DEFAULT_CODEC).compressors))
        for rep in range(repeat):
            path = os.path.join(tmp, f"d{rep}.zarr")
            z = zarr.create_array(
                path, shape=x.shape, chunks=inner, shards=shard_shape, dtype="uint16", compressors=compressors
            )
            timed(("to_zarr",), lambda: da.to_zarr(datas[aligned].data, z))
            if rep == repeat - 1:
                assert bool(da_equal(da.from_zarr(path), arr))
            shutil.rmtree(path)
        row(f"dask.array.to_zarr (zarr defaults), {aligned}", DEFAULT_CODEC, ("to_zarr",))
        # convert = the CLI's path (zarr_store.open_for_save: the file read in whole shards) + save;
        # "reader's chunks" = open_dataset + save (what convert did before: a rechunk of the reads)
        # DatasetWriter = rows from the client (its CPU is the client column); with client= the rows are
        # scattered to the workers and written there (worker CPU and client CPU both count)
        open_for_save = getattr(zs, "open_for_save", None)
        converts = {"reader's chunks (open_dataset + save)": stemdask.open_dataset}
        if open_for_save is not None:
            converts["shard tiles (open_for_save + save, the CLI)"] = open_for_save
        for codec in dict.fromkeys([DEFAULT_CODEC, "none"]):
            for rep in range(repeat):
                for how, opener in converts.items():
                    path = os.path.join(tmp, f"c{rep}.zarr")
                    timed(("convert", how, codec), lambda: stemdask.save(opener(npy), path, codec=codec))
                    if rep == repeat - 1:
                        assert same_on_workers(path)
                    shutil.rmtree(path)

                for key, writer_client in (("writer", None), ("workers writer", client)):

                    def append_rows(writer_client=writer_client):
                        with stemdask.DatasetWriter(
                            path,
                            scan_shape=(0, scan[1]),
                            detector_shape=(128, 128),
                            dtype="uint16",
                            codec=codec,
                            client=writer_client,
                        ) as w:
                            for y in range(0, scan[0], 16):
                                w.append(x[y : y + 16])

                    timed((key, codec), append_rows)
                    if rep == repeat - 1:
                        assert same_on_workers(path)
                    shutil.rmtree(path)
            for how in converts:
                row(f"convert (.npy -> store), {how}", codec, ("convert", how, codec))
            row("DatasetWriter (client, 16 rows per append)", codec, ("writer", codec))
            row("DatasetWriter on the workers (client=, 16 rows per append)", codec, ("workers writer", codec))
    if not had:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return rows, profile


def da_equal(a, b) -> bool:
    """Whether two dask arrays are equal, computed where their blocks are (nothing gathered to the client)."""
    import dask.array as da

    return bool(da.all(a == b).compute())


def _process_cpu() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _workers_cpu(client) -> float:
    """CPU seconds (user + system, all threads) the workers of ``client`` have used so far."""
    return sum(client.run(_process_cpu).values())


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


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


def raw_shard_profile_rows(tmp, repeat):
    """Where the time of reading one uncompressed shard goes: each reader of io/local_read, and its parts.

    One shard of the imaging benchmark's layout (32x128 positions x 128x128 uint16 = 134 MB,
    16 inner chunks of 2x128 positions, 8 MiB; codec "none": crc32c only), uniform 12-bit
    values; the dask tile is half the shard (16x128). CPU time of the whole process (zarr
    decodes on its own threads). Returns (label, MB/s wall, MB per CPU-s, CPU ms).
    """
    import mmap

    import google_crc32c
    import zarr

    from stemdask.io.local_read import READERS

    shape, inner = (32, 128, 128, 128), (2, 128, 128, 128)
    x = np.random.default_rng(0).integers(0, 4096, size=shape, dtype=np.uint16)
    path = os.path.join(tmp, "raw-shard.zarr")
    z = zarr.create_array(
        path, shape=shape, chunks=inner, shards=shape, dtype="uint16", compressors=[zarr.codecs.Crc32cCodec()]
    )
    z[:] = x
    shard = os.path.join(path, "c", "0", "0", "0", "0")
    size = os.path.getsize(shard)
    chunks = [np.ascontiguousarray(x[i : i + 2]) for i in range(0, 32, 2)]
    tile = np.s_[:16]

    def readinto():
        out = np.empty(size, np.uint8)
        with open(shard, "rb", buffering=0) as f:
            f.readinto(out)

    def mapped_crc():
        with open(shard, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        google_crc32c.value(np.frombuffer(m, np.uint8))

    from zarr.buffer import default_buffer_prototype

    out = default_buffer_prototype().nd_buffer.from_numpy_array(np.empty_like(x[tile]))
    cases = []
    for name, cls in READERS.items():
        arr = zarr.open_array(cls(path, read_only=True), mode="r")
        # zarr's public out= (an NDBuffer) against a new output: the sharding codec's own intermediate stays
        cases.append(
            (
                f"read: reader {name!r}, one dask tile into a preallocated out= (get_basic_selection)",
                x.nbytes // 2,
                lambda a=arr: a.get_basic_selection(tile, out=out),
            )
        )
        assert arr[:].tobytes() == x.tobytes() and arr[tile].tobytes() == x[tile].tobytes()
        cases.append((f"read: reader {name!r}, whole shard", x.nbytes, lambda a=arr: a[:]))
        cases.append(
            (f"read: reader {name!r}, one dask tile (16x128, half the shard)", x.nbytes // 2, lambda a=arr: a[tile])
        )
    cases += [
        ("part: the shard file into a new bytes (zarr's LocalStore)", size, lambda: open(shard, "rb").read()),
        ("part: the shard file into a new NumPy array (readinto; reader 'numpy')", size, readinto),
        ("part: map the shard file and crc32c it (reader 'mmap', first read, + check)", size, mapped_crc),
        ("part: crc32c of the 16 chunks in memory", x.nbytes, lambda: [google_crc32c.value(c) for c in chunks]),
        ("part: copy the chunks into a new array (done twice by zarr)", x.nbytes, lambda: np.concatenate(chunks)),
    ]
    # two threads at once, each reading one half of the shard as a dask task does (CheckedZarrSource)
    from concurrent.futures import ThreadPoolExecutor

    from stemdask.io.checked import CheckedZarrSource

    pool = ThreadPoolExecutor(2)
    for name in READERS:
        source = CheckedZarrSource(path, "", shape, x.dtype, name)
        halves = [np.s_[:16], np.s_[16:]]
        cases.append(
            (
                f"read: reader {name!r}, two threads, one tile each",
                x.nbytes,
                lambda s=source: list(pool.map(s.__getitem__, halves)),
            )
        )
    rows = []
    for label, nbytes, fn in cases:
        t_wall, t_cpu = _cpu_wall_median(fn, repeat)
        rows.append((label, nbytes / 1e6 / t_wall, nbytes / 1e6 / max(t_cpu, 1e-6), t_cpu * 1e3))
    pool.shutdown()
    # one dask tile as stemdask's dask tasks read it (CheckedZarrSource), in a fresh process each: plain,
    # and with the nanny's MALLOC_TRIM_THRESHOLD_ (mmap threshold fixed at 128 KiB) with and without
    # keep_freed_memory (which CheckedZarrSource calls: mmap threshold 32 MiB)
    for env_label, env, keep in (
        ("plain process", {}, True),
        (
            "nanny's MALLOC_TRIM_THRESHOLD_, thresholds raised (as on a worker)",
            {"MALLOC_TRIM_THRESHOLD_": "65536"},
            True,
        ),
        ("nanny's MALLOC_TRIM_THRESHOLD_, thresholds not raised", {"MALLOC_TRIM_THRESHOLD_": "65536"}, False),
    ):
        for name in READERS:
            probe = subprocess.run(
                [sys.executable, __file__, "--tile-probe", path, name, str(max(repeat, 7)), str(int(keep))],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            t_wall, t_cpu = json.loads(probe.stdout.strip().splitlines()[-1])
            nbytes = x.nbytes // 2
            label = f"dask tile via CheckedZarrSource, reader {name!r}, {env_label}"
            rows.append((label, nbytes / 1e6 / t_wall, nbytes / 1e6 / max(t_cpu, 1e-6), t_cpu * 1e3))
    return rows


def _tile_probe(path: str, reader: str, repeat: int, keep: bool) -> tuple[float, float]:
    """(wall, CPU) median seconds of reading the first 16x128 positions of ``path`` as a dask task does."""
    import stemdask.worker_memory as wm
    from stemdask.io.checked import CheckedZarrSource

    if not keep:
        wm._done = True  # as before the read path raised the thresholds itself
    import zarr

    shape = zarr.open_array(path, mode="r").shape
    source = CheckedZarrSource(path, "", shape, np.dtype("uint16"), reader)
    return _cpu_wall_median(lambda: source[:16, :, :, :], repeat)


PARTS = ("codecs", "histogram", "read", "profile", "write", "events")


def _table(header: str, rows: list[str]) -> list[str]:
    """A markdown table: header, its rule, rows; after a blank line."""
    return ["", header, "|" + "---|" * (header.count("|") - 1), *rows]


def codec_lines(repeat: int) -> list[str]:
    from bench_codec import simulate

    samples = [(f"simulated {d} e-/px", simulate(d, scan=(16, 16), det=(128, 128))[0]) for d in (0.1, 1.0)]
    samples += merlin_samples()
    rows = [
        f"| {label} | {name} | {ratio:.2f} | {enc:.0f} | {dec:.0f} |"
        for label, name, ratio, enc, dec in codec_rows(samples, repeat)
    ]
    return _table("| data | codec (+ crc32c) | ratio | encode MB/s/core | decode MB/s/core |", rows)


def histogram_lines(quick: bool, base: str | None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench_storage_kernels_") as kernels_tmp:
        # more rounds than elsewhere: the speed-ups against the baseline are the figures of interest
        hist = histogram_rows(5 if quick else 9, base, kernels_tmp)
    header = "| dose e-/px | bytes v1 | bytes v2 | v2/v1 size | decode v1 | decode v2 | v2 to events | encode v2 |"
    if base:
        header += f" decode v2, {base} | v2 to events, {base} | encode v2, {base} | decode speed-up | events speed-up |"
    rows = []
    for dose, s1, s2, d1, d2, ev, enc, old_d, old_ev, old_enc in hist:
        row = f"| {dose} | {s1} | {s2} | {s2 / s1 - 1:+.2%} | {d1:.0f} | {d2:.0f} | {ev:.0f} | {enc:.0f} |"
        if base:
            row += f" {old_d:.0f} | {old_ev:.0f} | {old_enc:.0f} | {d2 / old_d:.2f}x | {ev / old_ev:.2f}x |"
        rows.append(row)
    return _table(header, rows)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--tile-probe":
        path, reader, repeat, keep = sys.argv[2:]
        print(json.dumps(_tile_probe(path, reader, int(repeat), bool(int(keep)))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument(
        "--histogram-baseline",
        default=None,
        metavar="REV",
        help="also time the histogram decoders of git revision REV, in the same rounds (same chunks)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; expected a comma-separated subset of {PARTS}")
    repeat = 3 if args.quick else 5
    lines = [f"load average at start {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores"]
    if "codecs" in parts:
        lines += codec_lines(repeat)
    if "histogram" in parts:
        lines += histogram_lines(args.quick, args.histogram_baseline)
    with tempfile.TemporaryDirectory(prefix="bench_storage_") as tmp:
        if "read" in parts:
            rows = [f"| {label} | {v:.0f} | {c:.0f} |" for label, v, c in raw_read_rows(tmp, repeat, args.quick)]
            lines += _table("| read a whole store, one process | MB/s wall | MB per CPU-s |", rows)
        if "profile" in parts:
            rows = [f"| {lb} | {v:.0f} | {c:.0f} | {ms:.1f} |" for lb, v, c, ms in shard_profile_rows(tmp, repeat)]
            lines += _table("| one shard (134 MB), one process | MB/s wall | MB per CPU-s | CPU ms |", rows)
            rows = [f"| {lb} | {v:.0f} | {c:.0f} | {ms:.1f} |" for lb, v, c, ms in raw_shard_profile_rows(tmp, repeat)]
            lines += _table(
                "| one uncompressed shard (134 MB), one process | MB/s wall | MB per CPU-s | CPU ms |", rows
            )
        if "write" in parts:
            rows = []
            for label, codec, total, task, cpu, client_ms in write_rows(tmp, 3, args.quick)[0]:
                extra = " | ".join("" if v is None else f"{v:.0f}" for v in (task, cpu, client_ms))
                rows.append(f"| {label} | {codec} | {total:.0f} | {extra} |")
            header = (
                "| write, 2-worker LocalCluster (median) | codec | MB/s total, wall | one write task MB/s, wall"
                " | MB per worker-CPU-s | client CPU ms |"
            )
            lines += _table(header, rows)
        if "events" in parts:
            rows = [
                f"| {d} | {sched} | {kind} | {v:.2f} |" for d, sched, kind, v in events_store_rows(tmp, 3, args.quick)
            ]
            lines += _table(
                "| dose e-/px | scheduler | histogram store opened as | virtual image, GB/s of dense bytes |", rows
            )
    lines += ["", f"load average at end {os.getloadavg()[0]:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
