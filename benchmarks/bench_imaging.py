"""Virtual detectors and CoM: stemdask against LiberTEM and py4DSTEM on the same data.

Measures GB/s (raw uint16 input bytes per second of wall time) for a virtual
detector with 1 mask (an ADF annulus) and with 16 masks (rings), and for the
centre of mass, with the data in memory and in a zarr store on disk; the
peers run in ``benchmarks/_venv_peers`` (numpy 1.26) as a subprocess on the
same ``.npy`` file, in the same run. Then, with ``--ooc``, an out-of-core
run: a zarr dataset three times larger than the workers' total memory limit
through a LocalCluster, reporting peak worker memory.

    python3 benchmarks/bench_imaging.py                  # 512 MiB, 5 warm runs
    python3 benchmarks/bench_imaging.py --ooc            # + out-of-core run
    python3 benchmarks/bench_imaging.py --scan 64 --reps 3 --skip-peers
    python3 benchmarks/bench_imaging.py --kernels-only   # the fused kernels on one block, CPU time
    python3 benchmarks/bench_imaging.py --store-vs-npy --json benchmarks/_work/store_vs_npy.json
        # 1 mask and CoM: default-codec and uncompressed store against the same .npy (threads, 2-worker cluster)

Set up the peers once (see benchmarks/README.md)::

    python3 -m venv benchmarks/_venv_peers
    benchmarks/_venv_peers/bin/pip install torch==2.13.0
    benchmarks/_venv_peers/bin/pip install libertem==0.16.0 py4dstem==0.14.18 ptychography40==0.1.0
"""

from __future__ import annotations

import _clean_env  # noqa: I001  (first: re-executes without leaked malloc tunables, pins BLAS threads)

if __name__ == "__main__":  # not in the cluster's spawned workers, which import this module as __mp_main__
    _clean_env.start_clean()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from _timing import timed  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import stemdask  # noqa: E402
from stemdask.imaging import center_of_mass, detectors, virtual_image  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
PEER_PY = HERE / "_venv_peers" / "bin" / "python"
PIXEL_MRAD = 0.5


def make_data(scan, det, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.empty((scan, scan, det, det), np.uint16)
    for i in range(scan):  # row by row: no float64 temporaries of the whole array
        arr[i] = rng.integers(0, 4096, size=(scan, det, det), dtype=np.uint16)
    return arr


def masks_for(data):
    det = data.shape[-1]
    rmax = 0.45 * det * PIXEL_MRAD
    adf = detectors.annulus(data, 0.25 * rmax, rmax, name="ADF")
    edges = np.linspace(0, rmax, 17)
    rings = detectors.rings(data, edges)
    return adf, rings, edges


def run_stemdask(data, adf, rings, reps, label, results, outputs, scheduler, dtypes=("float64", "float32")):
    tasks = {
        "1 mask": lambda dt: virtual_image(data, adf, dtype=dt),
        "16 masks": lambda dt: virtual_image(data, rings, dtype=dt),
        "CoM": lambda dt: center_of_mass(data, dtype=dt),
    }
    for task, make in tasks.items():
        for dt in dtypes:
            lazy = make(dt)
            res, out = timed(lambda: lazy.compute(**scheduler), reps)
            results[f"{label} ({dt})|{task}"] = res
            outputs[(label, task, dt)] = out
            print(f"  {label} {dt} {task}: {data.nbytes / res['median_s'] / 1e9:.2f} GB/s", flush=True)


def peak_memory_sampler(client, stop, peaks):
    def rss():
        import psutil

        return psutil.Process().memory_info().rss

    while not stop.is_set():
        try:
            for addr, value in client.run(rss).items():
                peaks[addr] = max(peaks.get(addr, 0), value)
        except Exception:
            pass
        time.sleep(0.05)


def out_of_core(args):
    from distributed import Client, LocalCluster

    limit = args.ooc_limit_mib * 2**20
    n_workers = 2
    total = 3 * n_workers * limit
    det = args.det
    scan_x = args.scan
    scan_y = int(np.ceil(total / (scan_x * det * det * 2)))
    store = WORK / "ooc.zarr"
    if store.exists():
        shutil.rmtree(store)
    print(
        f"out of core: writing {scan_y}x{scan_x}x{det}x{det} uint16 "
        f"({scan_y * scan_x * det * det * 2 / 2**30:.2f} GiB) to {store}",
        flush=True,
    )
    lazy = da.random.default_rng(1).integers(
        0, 4096, size=(scan_y, scan_x, det, det), dtype=np.uint16, chunks=(8, scan_x, det, det)
    )
    src = stemdask.from_array(lazy, detector_pixel_mrad=PIXEL_MRAD, chunks=(8, scan_x))
    with dask.config.set(scheduler="threads", num_workers=2):
        stemdask.save(src, store, codec="none")
    # 16 MiB tasks: a worker holds a few chunks plus float batches, far below its limit
    rows_per_chunk = max(1, (16 * 2**20) // (scan_x * det * det * 2))
    data = stemdask.open_dataset(store, chunks=(rows_per_chunk, scan_x))
    adf, rings, _ = masks_for(data)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        memory_limit=limit,
        dashboard_address=None,
        local_directory=str(WORK / "dask-ooc"),
    )
    client = Client(cluster)
    rows = {}
    try:
        for task, lazy_out in (("16 masks", virtual_image(data, rings)), ("CoM", center_of_mass(data))):
            peaks: dict = {}
            stop = threading.Event()
            sampler = threading.Thread(target=peak_memory_sampler, args=(client, stop, peaks), daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            out = lazy_out.compute()
            wall = time.perf_counter() - t0
            stop.set()
            sampler.join()
            assert np.all(np.isfinite(out.values))
            rows[task] = {
                "wall_s": wall,
                "gbps": data.nbytes / wall / 1e9,
                "peak_worker_mib": max(peaks.values()) / 2**20 if peaks else float("nan"),
            }
            print(f"  ooc {task}: {rows[task]}", flush=True)
    finally:
        client.close()
        cluster.close()
    return {
        "nbytes": int(data.nbytes),
        "limit_mib_per_worker": args.ooc_limit_mib,
        "workers": n_workers,
        "chunks": [int(c[0]) for c in data.data.chunks],
        "rows": rows,
    }


def kernels(args):
    """CPU time of one thread for the fused kernels on one 64 MiB block, beside ``np.max`` of it.

    ``np.max`` is a plain SIMD read of the block: a kernel far below it is bound by its
    arithmetic, not by memory. Prints GB/s of raw input per CPU-second (median of ``reps``).
    """
    from stemdask.imaging import _fused

    det = args.det
    frames_per_block = max(8, (64 * 2**20) // (det * det * 2))
    rng = np.random.default_rng(0)
    block = rng.integers(0, 4096, size=(frames_per_block, det * det), dtype=np.uint16)
    yy, xx = np.mgrid[:det, :det] - det / 2
    r = np.hypot(yy, xx)
    adf = ((r >= 0.1125 * det) & (r < 0.45 * det)).reshape(1, -1).astype(np.float64)
    four = np.concatenate([adf, 2 * adf, np.roll(adf, 7, axis=1), 1 - adf])
    cases = {
        "dot_masks, 1 mask": lambda: _fused.dot_masks(block, adf),
        "dot_masks, 4 masks": lambda: _fused.dot_masks(block, four),
        "affine_moments (CoM)": lambda: _fused.affine_moments(block.reshape(-1, det, det)),
        "np.max (a plain read)": lambda: block.max(),
    }
    rows = {}
    for name, fn in cases.items():
        fn()  # compile / warm
        cpu = []
        for _ in range(max(args.reps, 5)):
            c0 = time.thread_time()
            fn()
            cpu.append(time.thread_time() - c0)
        rows[name] = block.nbytes / float(np.median(cpu)) / 1e9
        print(f"  {name}: {rows[name]:.2f} GB per CPU-second", flush=True)
    return {"block_bytes": int(block.nbytes), "gb_per_cpu_s": rows, "load": os.getloadavg()}


def main_ooc_only(args):
    results = {"ooc": out_of_core(args), "nbytes": 0}
    print(table_ooc(results["ooc"]))


def _interleaved(cases, reps):
    """Each case once cold, then ``reps`` rounds of every case in turn: medians of wall and CPU time.

    ``cpu_s`` is this process's CPU time (all its threads); ``tree_cpu_s`` adds the cluster's
    worker processes. Interleaving keeps a change of machine load from favouring one case.
    """
    from _timing import tree_cpu_s

    first = {name: fn() for name, fn in cases.items()}
    samples = {name: {"warm_s": [], "cpu_s": [], "tree_cpu_s": []} for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            k0, c0, t0 = tree_cpu_s(), time.process_time(), time.perf_counter()
            fn()
            samples[name]["warm_s"].append(time.perf_counter() - t0)
            samples[name]["cpu_s"].append(time.process_time() - c0)
            samples[name]["tree_cpu_s"].append(tree_cpu_s() - k0)
    for s in samples.values():
        s.update({f"median_{k}": float(np.median(v)) for k, v in list(s.items())})
    return samples, first


def store_vs_npy(args):
    """1 mask and CoM from a default-codec store, an uncompressed store and the same data as ``.npy``, same run.

    Threads (2) and a 2-worker LocalCluster (processes, 1 thread each); each store is read
    with zarr-python's pipeline through stemdask's default reader (``mmap``) and through
    zarr's own ``LocalStore``, and, where the package ``zarrs`` imports, with zarrs too.
    Results are checked equal between the sources and, for the virtual image, against NumPy.
    """
    import importlib.util

    from distributed import Client, LocalCluster

    from stemdask.io.local_read import use_reader
    from stemdask.io.pipeline import use_codec_pipeline
    from stemdask.io.sources import clear_map_cache

    arr = make_data(args.scan, args.det)
    nbytes = arr.nbytes
    npy = WORK / "imaging.npy"
    np.save(npy, arr)
    npy_data = stemdask.open_dataset(npy, detector_pixel_mrad=PIXEL_MRAD)
    adf, _, _ = masks_for(npy_data)
    mask = adf.values[0].astype(np.float64)
    reference = np.stack([np.tensordot(row.astype(np.float64), mask, axes=2) for row in arr])
    del arr

    def saved(name, codec, reader):
        """The data saved as ``name`` with ``codec`` (None: the default), opened to be read by ``reader``."""
        path = WORK / name
        if not path.exists():
            stemdask.save(npy_data, path, codec=codec)
        previous = use_reader(reader)  # the opened source keeps its reader (io/local_read)
        try:
            return stemdask.open_dataset(path), sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        finally:
            use_reader(previous)

    for name in ("imaging-default.zarr", "imaging-none.zarr"):
        if (WORK / name).exists():
            shutil.rmtree(WORK / name)
    # the default codec (blosc lz4 bitshuffle + crc32c) and "none" (crc32c only), both sharded as save makes them
    on_disk, stored = saved("imaging-default.zarr", None, "mmap")
    on_disk_lstore, _ = saved("imaging-default.zarr", None, "zarr")
    raw, stored_raw = saved("imaging-none.zarr", "none", "mmap")
    raw_lstore, _ = saved("imaging-none.zarr", "none", "zarr")
    # case -> (dataset, codec pipeline or None); "reader zarr": zarr's own LocalStore, else stemdask's mmap reader
    sources = {
        "npy": (npy_data, None),
        "store": (on_disk, "zarr"),
        "store, reader zarr": (on_disk_lstore, "zarr"),
        "store none": (raw, "zarr"),
        "store none, reader zarr": (raw_lstore, "zarr"),
    }
    if importlib.util.find_spec("zarrs") is not None:
        sources["store (zarrs)"] = (on_disk, "zarrs")
        sources["store none (zarrs)"] = (raw, "zarrs")
    # "npy, fresh map": the map cache of io/sources dropped before each compute (in this process
    # and on the workers), as every read mapped the file afresh before the cache: its pages fault in again
    sources["npy, fresh map"] = (npy_data, None)
    pipes = {name: pipe for name, (_, pipe) in sources.items()}
    results: dict = {
        "nbytes": nbytes,
        "stored_bytes": stored,
        "stored_bytes_none": stored_raw,
        "shape": list(npy_data.shape),
        "store_chunks": list(on_disk.data.chunksize),
        "npy_chunks": list(npy_data.data.chunksize),
        "load_before": os.getloadavg(),
    }

    def case(name, task, scheduler, client=None):
        data = sources[name][0]
        lazy = virtual_image(data, adf, dtype="float64") if task == "1 mask" else center_of_mass(data, dtype="float64")

        def run():
            if pipes[name] is not None:
                use_codec_pipeline(pipes[name], client=client)
            if name == "npy, fresh map":
                clear_map_cache()
                if client is not None:
                    client.run(clear_map_cache)
            return lazy.compute(**scheduler).values

        return run

    def measure(label, scheduler, client=None):
        for task in ("1 mask", "CoM"):
            cases = {name: case(name, task, scheduler, client) for name in pipes}
            samples, first = _interleaved(cases, args.reps)
            for name in pipes:
                results[f"{label}|{task}|{name}"] = samples[name]
                if task == "1 mask":
                    np.testing.assert_allclose(first[name].reshape(reference.shape), reference, rtol=1e-12)
                np.testing.assert_array_equal(first[name], first["npy"])
            print(f"  {label} {task}: " + store_npy_line(results, label, task, list(pipes)), flush=True)
        if "store (zarrs)" in pipes:
            use_codec_pipeline("zarr", client=client)

    print(
        f"data {results['shape']} uint16, {nbytes / 2**20:.0f} MiB; store {stored / 2**20:.0f} MiB, "
        f"uncompressed store {stored_raw / 2**20:.0f} MiB",
        flush=True,
    )
    measure("threads", {"scheduler": "threads", "num_workers": 2})
    results["load_threads_end"] = os.getloadavg()
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            local_directory=str(WORK / "dask-bench"),
        ) as cluster,
        Client(cluster) as client,
    ):
        if args.keep_freed_memory:  # diagnosis: the nanny's MALLOC_TRIM_THRESHOLD_ against reads that allocate
            from stemdask.worker_memory import keep_freed_memory

            client.run(keep_freed_memory)
            results["workers_keep_freed_memory"] = True
        measure("localcluster", {}, client)
    results["load_after"] = os.getloadavg()
    args.json.write_text(json.dumps(results, indent=1))
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    return results


def store_npy_line(results, label, task, names):
    """One line: GB/s of wall and per CPU-second for each source, and store / npy ratios."""
    nbytes = results["nbytes"]
    cpu_key = "median_cpu_s" if label == "threads" else "median_tree_cpu_s"
    npy = results[f"{label}|{task}|npy"]
    cells = []
    for name in names:
        r = results[f"{label}|{task}|{name}"]
        cells.append(
            f"{name} {nbytes / r['median_warm_s'] / 1e9:.2f} GB/s wall, {nbytes / r[cpu_key] / 1e9:.2f} per CPU-s"
            + (
                ""
                if name == "npy"
                else f" ({npy['median_warm_s'] / r['median_warm_s']:.2f}x wall, {npy[cpu_key] / r[cpu_key]:.2f}x CPU)"
            )
        )
    return "; ".join(cells)


def run_peers(args, npy, masks_npz, label, nbytes):
    """LiberTEM and py4DSTEM in their venv, in the clean environment; (timings, result arrays)."""
    if not args.peer_python.exists():
        sys.exit(f"peers venv missing: {args.peer_python} (see the module docstring)")
    out_npz = WORK / f"peer_outputs_{label}.npz"
    print(f"peers (LiberTEM, py4DSTEM) in {args.peer_python}, clean environment ({label})", flush=True)
    proc = subprocess.run(
        [
            str(args.peer_python),
            str(HERE / "_peers_imaging.py"),
            str(npy),
            str(masks_npz),
            str(args.reps),
            "--outputs",
            str(out_npz),
        ],
        capture_output=True,
        text=True,
        env=_clean_env.peer_env(),
    )
    if proc.returncode != 0:
        sys.exit("peer run failed:\n" + proc.stderr[-4000:])
    peers = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("nbytes", "shape"):
        peers.pop(key)
    with np.load(out_npz) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in peers.items():
        if "|" in key:
            print(f"  {key}: {nbytes / value['median_s'] / 1e9:.2f} GB/s", flush=True)
    return peers, arrays


def check_against_peers(outputs, peer_arrays, center_px):
    """Largest differences between stemdask's float64 results and every peer's, over the whole scan."""
    ours = {
        "1 mask": outputs[("stemdask-threads-mem", "1 mask", "float64")].values,
        "16 masks": outputs[("stemdask-threads-mem", "16 masks", "float64")].values,
        "CoM": outputs[("stemdask-threads-mem", "CoM", "float64")].values / PIXEL_MRAD + np.asarray(center_px),
    }
    checks = {}
    for key, theirs in peer_arrays.items():
        peer, task = key.split("|")
        mine = ours[task]
        theirs = np.asarray(theirs, dtype=np.float64).reshape(mine.shape)
        if task == "CoM":
            checks[f"{key} max abs diff (px)"] = float(np.max(np.abs(mine - theirs)))
        else:
            checks[f"{key} max rel diff"] = float(np.max(np.abs(mine - theirs) / np.maximum(np.abs(mine), 1.0)))
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, default=128, help="scan positions per side")
    parser.add_argument("--det", type=int, default=128, help="detector pixels per side")
    parser.add_argument("--reps", type=int, default=5, help="warm repetitions (median reported)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--peers-only", action="store_true", help="run only the peers (their figures alone)")
    parser.add_argument("--skip-zarr", action="store_true", help="leave out the zarr-store rows")
    parser.add_argument("--peer-python", type=Path, default=PEER_PY, help="python of the peers' venv")
    parser.add_argument("--ooc", action="store_true", help="also run the out-of-core test")
    parser.add_argument("--ooc-limit-mib", type=int, default=512, help="memory limit per worker (MiB)")
    parser.add_argument("--ooc-only", action="store_true", help="run only the out-of-core test")
    parser.add_argument(
        "--store-vs-npy",
        action="store_true",
        help="only 1 mask and CoM from a default-codec store, an uncompressed one and the .npy",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="with --store-vs-npy: raise glibc's mmap/trim thresholds on the workers (ptycho's mallopt)",
    )
    parser.add_argument("--kernels-only", action="store_true", help="only the fused kernels on one 64 MiB block")
    parser.add_argument("--json", type=Path, default=WORK / "bench_imaging.json")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.kernels_only:
        print(f"load average {os.getloadavg()}", flush=True)
        return print(json.dumps(kernels(args)))
    if args.ooc_only:
        return main_ooc_only(args)
    if args.store_vs_npy:
        return store_vs_npy(args)
    results: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "argv": sys.argv[1:]}

    arr = make_data(args.scan, args.det)
    nbytes = arr.nbytes
    print(f"data: {arr.shape} uint16, {nbytes / 2**20:.0f} MiB", flush=True)
    npy = WORK / "imaging.npy"
    np.save(npy, arr)
    # chunk the numpy array directly: stemdask.from_array(numpy) makes one chunk and rechunks it,
    # which copies the whole array on every compute (about 60 ms per 512 MiB here)
    rows = max(1, (64 * 2**20) // (args.scan * args.det * args.det * 2))
    data = stemdask.from_array(da.from_array(arr, chunks=(rows, -1, -1, -1)), detector_pixel_mrad=PIXEL_MRAD)
    adf, rings, edges = masks_for(data)
    center_px = data.attrs["beam_center_px"]
    masks_npz = WORK / "imaging_masks.npz"
    np.savez(
        masks_npz,
        adf=adf.values[0],
        rings=rings.values,
        center_px=np.asarray(center_px),
        adf_radii_px=np.asarray(adf.attrs["detector"]["edges_mrad"]) / PIXEL_MRAD,
        ring_edges_px=edges / PIXEL_MRAD,
    )

    # the peers first, before any cluster has touched os.environ, and with an explicit clean env
    peer_arrays: dict = {}
    if not args.skip_peers:
        results["load_peers_start"] = os.getloadavg()
        peers, peer_arrays = run_peers(args, npy, masks_npz, "first", nbytes)
        results.update(peers)
        results["load_peers_end"] = os.getloadavg()
    if args.peers_only:
        results.update(load_after=os.getloadavg(), nbytes=nbytes, shape=list(arr.shape))
        args.json.write_text(json.dumps(results, indent=1))
        print(table(results))
        return None

    outputs: dict = {}
    threads = {"scheduler": "threads", "num_workers": 2}
    results["load_stemdask_start"] = os.getloadavg()
    print("stemdask, in memory, threaded scheduler (2 threads)", flush=True)
    run_stemdask(data, adf, rings, args.reps, "stemdask-threads-mem", results, outputs, threads)

    if not args.skip_zarr:
        store = WORK / "imaging.zarr"
        if store.exists():
            shutil.rmtree(store)
        stemdask.save(data, store, codec="none")
        on_disk = stemdask.open_dataset(store)
        print(f"stemdask, zarr on disk (uncompressed, chunks {on_disk.data.chunksize})", flush=True)
        run_stemdask(on_disk, adf, rings, args.reps, "stemdask-threads-zarr", results, outputs, threads, ("float64",))
    npy_data = stemdask.open_dataset(npy, detector_pixel_mrad=PIXEL_MRAD)

    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, local_directory=str(WORK / "dask-bench")
        ) as cluster,
        Client(cluster),
    ):
        results["load_cluster_start"] = os.getloadavg()
        print("stemdask, LocalCluster (2 workers x 1 thread): zarr on disk, then the .npy file", flush=True)
        if not args.skip_zarr:
            run_stemdask(
                on_disk, adf, rings, args.reps, "stemdask-localcluster-zarr", results, outputs, {}, ("float64",)
            )
        run_stemdask(npy_data, adf, rings, args.reps, "stemdask-localcluster-npy", results, outputs, {})
    results["env_leaked_by_cluster"] = _clean_env.leaked()  # what a peer started now with os.environ would get

    if peer_arrays:
        results["checks"] = check_against_peers(outputs, peer_arrays, center_px)
        print(results["checks"], flush=True)

    if args.ooc:
        results["ooc"] = out_of_core(args)
    results["load_after"] = os.getloadavg()
    results["nbytes"] = nbytes
    results["shape"] = list(arr.shape)
    args.json.write_text(json.dumps(results, indent=1))
    print(table(results))


def table(results):
    nbytes = results["nbytes"]
    tasks = ("1 mask", "16 masks", "CoM")
    labels = sorted({k.split("|")[0] for k in results if "|" in k})
    lib = {t: results.get(f"libertem-threads-mem|{t}", {}).get("median_s") for t in tasks}
    lines = [
        f"data {tuple(results['shape'])} uint16 = {nbytes / 2**20:.0f} MiB; {results['cpus']} CPUs; "
        f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}; "
        "median of warm runs; GB/s of raw input (ratio to LiberTEM threads, in memory)",
        "",
        "| run | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for label in labels:
        cells = []
        for t in tasks:
            r = results.get(f"{label}|{t}")
            if r is None:
                cells.append("—")
                continue
            gbps = nbytes / r["median_s"] / 1e9
            ratio = f" ({lib[t] / r['median_s']:.2f}×)" if lib.get(t) else ""
            cells.append(f"{gbps:.2f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pairs = [
        ("stemdask-threads-mem (float64)", "libertem-threads-mem"),
        ("stemdask-threads-mem (float32)", "libertem-threads-mem"),
        ("stemdask-localcluster-npy (float64)", "libertem-dask-npy"),
        ("stemdask-localcluster-npy (float32)", "libertem-dask-npy"),
    ]
    pairs = [(a, b) for a, b in pairs if f"{a}|1 mask" in results and f"{b}|1 mask" in results]
    if pairs:
        lines += [
            "",
            "Ratios in this run, each stemdask set-up against LiberTEM's on the same source "
            "(wall time; > 1: stemdask faster):",
            "",
            "| stemdask | against | " + " | ".join(tasks) + " |",
            "|---|---|" + "---|" * len(tasks),
        ]
        for a, b in pairs:
            cells = [f"{results[f'{b}|{t}']['median_s'] / results[f'{a}|{t}']['median_s']:.2f}×" for t in tasks]
            lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    if results.get("checks"):
        lines += [
            "",
            "Agreement with the peers over the whole scan: "
            + "; ".join(f"{k} {v:.1e}" for k, v in results["checks"].items()),
        ]
    tree_pairs = [
        ("stemdask-threads-mem (float64)", "libertem-threads-mem"),
        ("stemdask-localcluster-npy (float64)", "libertem-dask-npy"),
        ("stemdask-localcluster-npy (float32)", "libertem-dask-npy"),
    ]
    tree_pairs = [
        (a, b)
        for a, b in tree_pairs
        if results.get(f"{a}|1 mask", {}).get("median_tree_cpu_s")
        and results.get(f"{b}|1 mask", {}).get("median_tree_cpu_s")
    ]
    if tree_pairs:
        lines += [
            "",
            "Ratios by CPU time of the whole process tree (client + cluster workers; stemdask's and "
            "LiberTEM's LocalCluster workers are child processes of the timed process; > 1: stemdask "
            "cheaper). Less sensitive to other load than wall time:",
            "",
            "| stemdask | against | " + " | ".join(tasks) + " |",
            "|---|---|" + "---|" * len(tasks),
        ]
        for a, b in tree_pairs:
            cells = [
                f"{results[f'{b}|{t}']['median_tree_cpu_s'] / results[f'{a}|{t}']['median_tree_cpu_s']:.2f}×"
                for t in tasks
            ]
            lines.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    loads = {k: v for k, v in results.items() if k.startswith("load_")}
    if loads:
        lines += [
            "",
            "Load average (1 min) at each stage: " + ", ".join(f"{k[5:]} {v[0]:.2f}" for k, v in loads.items()),
        ]
    inproc = [lab for lab in labels if "threads-mem" in lab or lab == "py4dstem"]
    lines += [
        "",
        "In-process runs by CPU time (GB per CPU-second of this process; less sensitive to "
        "other load on the machine; ratio to LiberTEM threads):",
        "",
        "| run | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    lib_cpu = {t: results.get(f"libertem-threads-mem|{t}", {}).get("median_cpu_s") for t in tasks}
    for label in inproc:
        cells = []
        for t in tasks:
            r = results.get(f"{label}|{t}")
            if r is None or not r.get("median_cpu_s"):
                cells.append("—")
                continue
            ratio = f" ({lib_cpu[t] / r['median_cpu_s']:.2f}×)" if lib_cpu.get(t) else ""
            cells.append(f"{nbytes / r['median_cpu_s'] / 1e9:.2f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "ooc" in results:
        lines += ["", table_ooc(results["ooc"])]
    return "\n".join(lines)


def table_ooc(o):
    lines = [
        f"out of core: {o['nbytes'] / 2**30:.2f} GiB zarr, {o['workers']} workers x "
        f"{o['limit_mib_per_worker']} MiB limit (data = "
        f"{o['nbytes'] / (o['workers'] * o['limit_mib_per_worker'] * 2**20):.1f}x total limit), "
        f"chunks {o['chunks']}",
        "",
        "| task | GB/s | wall s | peak worker RSS (MiB) |",
        "|---|---|---|---|",
    ]
    for task, row in o["rows"].items():
        lines.append(f"| {task} | {row['gbps']:.2f} | {row['wall_s']:.1f} | {row['peak_worker_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
