"""Benchmark of the electron event representation against dense frames.

Run from the repository root::

    python3 benchmarks/bench_events.py [--quick] [--out benchmarks/_work/events.md]

Data: Poisson counts (uint16) on a 64x64 scan of 128x128-pixel frames
(128 MiB dense) at a range of mean electrons per pixel per frame, with a
bright-field disc 4x brighter than the dark field so CoM and annular
detectors see structure. Both representations are held in memory (dask
``persist``) so only the operation is timed, with the threaded scheduler
and 2 threads for both.

Operations, dense path = stemdask.imaging (BLAS projection engine):

* CoM: ``imaging.center_of_mass`` on dense vs counted data (one engine; the
  event blocks go through its gather kernel);
* virtual detector (annulus): ``imaging.virtual_image`` on dense vs counted data;
* frame sum (PACBED): ``imaging.pacbed(dense, "sum")`` vs ``events.frame_sum``;
* and ``imaging.pacbed(counted, "sum")`` (the engine's PACBED on event blocks).

Timings: median of ``--repeats`` warm runs after one warm-up, the dense and
the event run of each operation interleaved so that both see the same load
(the machine is shared); both run in one clean process (``_clean_env``: no
malloc tunables leaked from a cluster start, one BLAS thread per worker
thread) and every operation's dense and event results are checked equal
(exact for the integer sums, 1e-12 relative for CoM) before it is timed. Storage:
bytes per electron of a stemdask event zarr store (default frame-delta +
bit-shuffled zstd, and plain zstd), of the stempy HDF5 layout (vlen uint32),
of raw linear-index arrays, of the run-length codes, and of the dense data
stored by ``stemdask.save`` (blosc) and raw. The crossover is where the speed-up of
each operation falls to 1 (log-linear interpolation between measured rates).
"""

from __future__ import annotations

import _clean_env  # noqa: I001  (first: no leaked malloc tunables, one BLAS thread, before numpy loads)

if __name__ == "__main__":
    _clean_env.start_clean()

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dask  # noqa: E402
import numpy as np  # noqa: E402
from _timing import interleaved_medians  # noqa: E402

import stemdask  # noqa: E402
import stemdask.events as ev  # noqa: E402
from stemdask import imaging  # noqa: E402


def simulate(rate, scan=(64, 64), det=(128, 128), seed=0):
    ky, kx = np.mgrid[: det[0], : det[1]]
    r = np.hypot(ky - det[0] / 2, kx - det[1] / 2)
    lam = np.where(r < det[0] / 6, 4.0, 1.0)
    lam *= rate / lam.mean()
    rng = np.random.default_rng(seed)
    return rng.poisson(lam, (*scan, *det)).astype(np.uint16)


def check_equal(name, dense, events):
    """The two representations must give the same numbers before their times mean anything."""
    a, b = np.asarray(dense), np.asarray(events)
    if name == "CoM":
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=name)
    else:
        np.testing.assert_array_equal(b, a, err_msg=name)


def dir_bytes(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def crossover(rates, speedups):
    """Rate where the speed-up crosses 1 (log-log interpolation), or None."""
    for (r0, s0), (r1, s1) in zip(zip(rates, speedups), zip(rates[1:], speedups[1:])):
        if s0 >= 1 > s1:
            t = np.log(s0) / (np.log(s0) - np.log(s1))
            return float(np.exp(np.log(r0) + t * (np.log(r1) - np.log(r0))))
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 3 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rates", type=float, nargs="*", default=[0.005, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown tables here")
    args = parser.parse_args()
    scan, det, chunks, repeats = ((64, 64), (128, 128), (16, 64), args.repeats)
    if args.quick:
        scan, det, chunks, repeats = (32, 32), (64, 64), (16, 32), 3
    dask.config.set(scheduler="threads", num_workers=2)

    lines = []
    load0 = os.getloadavg()
    speed_rows, store_rows = [], []
    speedups = {"CoM": [], "virtual detector": [], "frame sum": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    try:
        for rate in args.rates:
            dense_np = simulate(rate, scan, det)
            n_e = int(dense_np.sum())
            dense = stemdask.from_array(dense_np, chunks=chunks, detector_pixel_mrad=0.5, scan_step_A=0.5).persist()
            t0 = time.perf_counter()
            counted = ev.from_dense(dense).persist()
            convert = time.perf_counter() - t0
            ring = imaging.detectors.annulus(dense, 12.0, 28.0)
            ops = {
                "CoM": (
                    lambda: imaging.center_of_mass(dense).compute(),
                    lambda: imaging.center_of_mass(counted).compute(),
                ),
                "virtual detector": (
                    lambda: imaging.virtual_image(dense, ring).compute(),
                    lambda: imaging.virtual_image(counted, ring).compute(),
                ),
                "frame sum": (lambda: imaging.pacbed(dense, "sum").compute(), lambda: ev.frame_sum(counted).compute()),
            }
            row = [f"{rate:g}", f"{n_e / dense_np.shape[0] / dense_np.shape[1]:.0f}"]
            for name, (dense_fn, event_fn) in ops.items():
                check_equal(name, dense_fn(), event_fn())
                td, te = interleaved_medians([dense_fn, event_fn], repeats)
                speedups[name].append(td / te)
                row += [f"{td * 1e3:.1f} / {te * 1e3:.1f}", f"**{td / te:.1f}x**"]
            (engine,) = interleaved_medians([lambda: imaging.pacbed(counted, "sum").compute()], repeats)
            row += [f"{engine * 1e3:.1f}", f"{convert:.2f}"]
            speed_rows.append(row)

            # storage: bytes per electron
            store = ev.save_events(counted, tmp / f"r{rate}.zarr")
            plain = ev.save_events(counted, tmp / f"r{rate}-zstd.zarr", codec="zstd")
            h5 = ev.write_stempy(counted, tmp / f"r{rate}.h5")
            dense_store = stemdask.save(dense, tmp / f"r{rate}-dense.zarr")
            blocks = counted.data.compute()
            raw = blocks.indices.nbytes + blocks.offsets.nbytes
            rle = ev.rle_encode(blocks)
            store_rows.append(
                [
                    f"{rate:g}",
                    f"{n_e}",
                    f"**{dir_bytes(store) / n_e:.2f}**",
                    f"{dir_bytes(plain) / n_e:.2f}",
                    f"{dir_bytes(h5) / n_e:.2f}",
                    f"{raw / n_e:.2f}",
                    f"{rle.nbytes / n_e:.2f}",
                    f"{dir_bytes(dense_store) / n_e:.2f}",
                    f"{dense_np.nbytes / n_e:.2f}",
                ]
            )
            for p in (store, plain, dense_store):
                shutil.rmtree(p)
            os.unlink(h5)
            print(f"rate {rate:g}: " + ", ".join(f"{k} {v[-1]:.1f}x" for k, v in speedups.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()

    lines.append(
        f"Data: {scan[0]}x{scan[1]} scan, {det[0]}x{det[1]} px frames, uint16, chunks {chunks} "
        f"({np.prod(scan) * np.prod(det) * 2 / 2**20:.0f} MiB dense); threaded scheduler, 2 threads; "
        f"median of {repeats} interleaved warm runs; load average {load0[0]:.2f} before, {load1[0]:.2f} after."
    )
    lines.append("")
    lines.append(
        "| e-/px/frame | e-/frame | CoM dense / events (ms) | CoM speed-up | virtual det. dense / "
        "events (ms) | VD speed-up | frame sum dense / events (ms) | FS speed-up | "
        "imaging.pacbed on events (ms) | from_dense (s) |"
    )
    lines.append("|" + "---|" * 10)
    lines += ["| " + " | ".join(r) + " |" for r in speed_rows]
    lines.append("")
    lines.append(
        "Crossover (speed-up falls to 1): "
        + ", ".join(
            f"{k} {c:.2g} e-/px/frame" if (c := crossover(args.rates, v)) is not None else f"{k} none in range"
            for k, v in speedups.items()
        )
    )
    lines.append("")
    lines.append(
        "| e-/px/frame | electrons | event zarr (delta-blosc, default) B/e- | event zarr (zstd) B/e- | "
        "stempy HDF5 B/e- | raw linear index + offsets B/e- | RLE codes B/e- | "
        "dense zarr (stemdask.save, blosc) B/e- | dense uint16 raw B/e- |"
    )
    lines.append("|" + "---|" * 9)
    lines += ["| " + " | ".join(r) + " |" for r in store_rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
