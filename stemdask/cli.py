"""The ``stemdask`` command: ``info``, ``convert``, ``compress``, ``verify`` and ``demo``.

Every command takes ``--scheduler ADDRESS`` to compute on an existing dask
cluster; without it ``convert`` and ``demo`` start a local one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .errors import StemdaskError

#: Python keywords named in error messages -> the CLI option that sets the same thing
_OPTIONS = {
    "overwrite": "--overwrite",
    "allow_incomplete": "--allow-incomplete",
    "dataset": "--dataset",
    "scan_shape": "--scan-shape",
    "shape": "--shape",
    "dtype": "--dtype",
    "byte_order": "--byte-order",
    "header_bytes": "--header-bytes",
    "energy_ev": "--energy-ev",
    "semiangle_mrad": "--semiangle-mrad",
    "scan_step_A": "--scan-step-A",
    "detector_pixel_mrad": "--detector-pixel-mrad",
    "codec": "--codec",
    "chunks": "--chunks",
    "shards": "--shards",
    "n_workers": "--workers",
}
_KEYWORD = re.compile(r"(?<![\w.-])(" + "|".join(sorted(_OPTIONS, key=len, reverse=True)) + r")=(True\b)?")


def cli_advice(message: str) -> str:
    """An error message with its Python advice ("pass overwrite=True") given as CLI options ("--overwrite")."""

    def option(match: re.Match) -> str:
        flag = _OPTIONS[match.group(1)]
        return flag if match.group(2) else f"{flag}="

    return _KEYWORD.sub(option, message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of workers (at least 1)")
    return value


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if getattr(args, "dataset", None):
        opts["dataset"] = args.dataset
    if getattr(args, "shape", None):
        opts["shape"] = tuple(args.shape)
    if getattr(args, "dtype", None):
        opts["dtype"] = args.dtype
    if getattr(args, "byte_order", None):
        opts["byte_order"] = args.byte_order
    if getattr(args, "header_bytes", None):
        opts["header_bytes"] = args.header_bytes
    if getattr(args, "scan_shape", None):
        opts["scan_shape"] = tuple(args.scan_shape)
    if getattr(args, "allow_incomplete", False):
        opts["allow_incomplete"] = True
    for key in ("energy_ev", "semiangle_mrad", "scan_step_A", "detector_pixel_mrad"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def cmd_info(args: argparse.Namespace) -> int:
    from . import open_dataset
    from .dataset import describe
    from .io import store_nbytes

    data = open_dataset(args.path, **_reader_options(args))
    if not hasattr(data, "dims") or "coefficients" in getattr(data, "data_vars", {}):
        return _info_compressed(args, data)
    info = describe(data)
    path = Path(args.path)
    on_disk = store_nbytes(path) if path.exists() else None
    if path.is_file() and path.suffix.lower() == ".mib":
        hdr = path.with_suffix(".hdr")
        on_disk += hdr.stat().st_size if hdr.is_file() else 0
    if path.is_file() and data.attrs.get("file_format") == "DECTRIS ARINA":
        from .io.hdf5 import linked_files

        linked = linked_files(path)  # the frames are in the data files the master links to
        if linked:
            info["metadata_bytes"] = on_disk
            on_disk = sum(f.stat().st_size for f in linked)
    info["bytes_on_disk"] = on_disk
    if path.is_dir():
        info.update(_stored_layout(path))
    info["compression_ratio"] = (info["nbytes"] / on_disk) if on_disk else None
    origin = data.attrs.get("file_format")
    info["file_format"] = f"zarr v3 store{f' (converted from {origin})' if origin else ''}" if path.is_dir() else origin
    if args.json:
        print(json.dumps(info, indent=2, default=str))  # print ends the document with a newline
        return 0
    print(f"{args.path}")
    print(f"  shape (scan_y, scan_x, k_y, k_x): {info['shape']}")
    print(f"  dtype: {info['dtype']}    read in dask chunks of {info['chunks']}")
    if "stored_chunks" in info:
        shards = info["stored_shards"] or "none (one file per chunk)"
        print(f"  stored chunks: {info['stored_chunks']}    shards: {shards}    codecs: {', '.join(info['codecs'])}")
    print(f"  size in memory: {_human(info['nbytes'])}")
    if on_disk:
        print(f"  bytes on disk: {_human(on_disk)}    compression ratio: {info['compression_ratio']:.2f}x")
    if info.get("metadata_bytes"):
        print(f"  (data files; the master file holds {_human(info['metadata_bytes'])} of metadata)")
    if info["file_format"]:
        print(f"  format: {info['file_format']}")
    units = {
        "energy_ev": "eV",
        "semiangle_mrad": "mrad",
        "scan_step_A": "Å (y, x)",
        "scan_origin_A": "Å (y, x)",
        "detector_pixel_mrad": "mrad (y, x)",
        "beam_center_px": "px (y, x)",
        "scan_rotation_deg": "deg",
        "dose_e_per_pattern": "e-/pattern",
    }
    print("  calibration:")
    for key, unit in units.items():
        value = info[key]
        print(f"    {key:20s} {'unknown' if value is None else value} {unit if value is not None else ''}")
    return 0


def _info_compressed(args: argparse.Namespace, data: Any) -> int:
    """``stemdask info`` of a compressed store: ratio C, bytes and the basis."""
    from .dataset import CALIBRATION_ATTRS
    from .metrics import storage_summary

    info = storage_summary(data, args.path)
    info.update(
        basis_kind=data.attrs.get("basis_kind"),
        compression_mode=data.attrs.get("compression_mode"),
        source_shape=data.attrs.get("source_shape"),
        source_dtype=data.attrs.get("source_dtype"),
        regions=data.attrs.get("regions"),
        calibration={k: data.attrs[k] for k in CALIBRATION_ATTRS if k in data.attrs},
    )
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{args.path}")
    print(f"  compressed dataset ({info['compression_mode']} mode) of {info['source_shape']} {info['source_dtype']}")
    print(
        f"  basis: {info['basis_kind']}, {info['n_bright']} BF + {info['n_dark']} DF masks, regions {info['regions']}"
    )
    print(
        f"  ratio C (Eq. 17): {info['ratio_C']:.1f} ({info['n_pixels']} pixels / "
        f"{info['n_bright'] + info['n_dark'] + 2} values per pattern)"
    )
    print(
        f"  bytes on disk: {_human(info['bytes_on_disk'])} for {_human(info['raw_bytes'])} of raw data "
        f"({info['ratio_on_disk']:.1f}x)"
    )
    for key, value in info["calibration"].items():
        print(f"    {key:20s} {value}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from . import open_dataset, save
    from .cluster import session
    from .compression import compress, make_basis
    from .metrics import storage_summary

    data = open_dataset(args.input, **_reader_options(args))
    regions = None
    if args.bf_radius_mrad is not None or args.df_outer_mrad is not None:
        from .compression import detector_regions

        regions = detector_regions(
            data,
            bf_radius_mrad=args.bf_radius_mrad,
            df_outer_mrad=float("inf") if args.df_outer_mrad is None else args.df_outer_mrad,
        )
    prior = None if args.basis_from is None else open_dataset(args.basis_from, **_reader_options(args))
    started = time.perf_counter()
    with session(args.scheduler) if args.scheduler else nullcontext():
        basis = make_basis(
            data,
            args.basis,
            n_bf=args.bf,
            n_df=args.df,
            mode=args.mode,
            seed=args.seed,
            n_samples=args.samples,
            regions=regions,
            samples=prior,
        )
        compressed = compress(data, basis, mode=args.mode, dtype=args.coefficient_dtype, precision=args.precision)
        out = save(compressed, args.output, overwrite=args.overwrite, progress=not args.quiet)
    seconds = time.perf_counter() - started
    info = storage_summary(compressed, out)
    print(
        f"wrote {out}: {basis.attrs['basis_kind']} basis, {info['n_bright']} BF + {info['n_dark']} DF masks, "
        f"ratio C {info['ratio_C']:.1f}; {_human(info['bytes_on_disk'])} on disk for {_human(info['raw_bytes'])} "
        f"of raw data ({info['ratio_on_disk']:.1f}x) in {seconds:.2f} s"
    )
    return 0


def _stored_layout(path: Path) -> dict[str, Any]:
    """Stored inner chunks, shards and codecs of a zarr store's 4-D array (empty when there is none)."""
    import zarr

    group = zarr.open_group(path, mode="r")
    name = group.attrs.get("stemdask_variable", "intensity")
    if name not in group or not isinstance(group[name], zarr.Array) or group[name].ndim != 4:
        return {}
    array = group[name]
    codecs = array.metadata.codecs
    inner = getattr(codecs[0], "codecs", codecs) if array.shards is not None else codecs
    return {
        "stored_chunks": tuple(array.chunks),
        "stored_shards": tuple(array.shards) if array.shards is not None else None,
        "codecs": [type(c).__name__ for c in inner],
    }


def _tile(values: list[int] | None) -> tuple[int, int] | None:
    return tuple(values) if values else None


def cmd_convert(args: argparse.Namespace) -> int:
    from . import save
    from .cluster import session
    from .io import store_nbytes
    from .io.zarr_store import open_for_save

    shards = False if args.no_shards else _tile(args.shards)
    # dask blocks = the store's shards: no rechunk between reading and writing
    data = open_for_save(
        args.input, codec=args.codec, chunks=_tile(args.chunks), shards=shards, **_reader_options(args)
    )
    started = time.perf_counter()
    with (
        session(args.scheduler, n_workers=args.workers, dashboard_address=":0")
        if args.cluster or args.scheduler
        else nullcontext()
    ):
        out = save(
            data,
            args.output,
            codec=args.codec,
            chunks=_tile(args.chunks),
            shards=shards,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    seconds = time.perf_counter() - started
    written = store_nbytes(out)
    print(
        f"wrote {out}: {_human(written)} on disk for {_human(data.nbytes)} of data "
        f"({data.nbytes / max(written, 1):.2f}x) in {seconds:.2f} s, codec {args.codec or 'blosc (default)'}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .cluster import session
    from .io.verify import verify

    with (
        session(args.scheduler, n_workers=args.workers, dashboard_address=":0", quiet=args.json)
        if args.cluster or args.scheduler
        else nullcontext()
    ):
        report = verify(args.store, progress=not (args.quiet or args.json))
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else str(report))
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), scheduler=args.scheduler, n_workers=args.workers, quick=args.quick)
    return 0


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading options (for files that need them)")
    g.add_argument("--dataset", help="HDF5 dataset path inside the file")
    g.add_argument("--shape", type=int, nargs="+", help="raw files: shape (scan_y scan_x k_y k_x)")
    g.add_argument("--dtype", help="raw files: pixel dtype, e.g. uint16")
    g.add_argument("--byte-order", choices=["native", "little", "big"], help="raw files: byte order")
    g.add_argument("--header-bytes", type=int, help="raw files: bytes before the first frame")
    g.add_argument("--scan-shape", type=int, nargs=2, metavar=("Y", "X"), help="scan of a frame stack (.mib too)")
    g.add_argument(
        "--allow-incomplete", action="store_true", help="zarr stores: read what an unfinished or damaged store holds"
    )
    c = p.add_argument_group("calibration (fills in or overrides the file's)")
    c.add_argument("--energy-ev", dest="energy_ev", type=float)
    c.add_argument("--semiangle-mrad", dest="semiangle_mrad", type=float)
    c.add_argument("--scan-step-A", dest="scan_step_A", type=float)
    c.add_argument("--detector-pixel-mrad", dest="detector_pixel_mrad", type=float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stemdask", description="Distributed 4D-STEM analysis on dask.")
    parser.add_argument("--version", action="version", version=f"stemdask {__import__('stemdask').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="shape, dtype, chunks, calibration and size of a dataset")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--scheduler", help="dask scheduler address (unused by info; accepted for symmetry)")
    _add_reader_args(info)
    info.set_defaults(func=cmd_info)

    conv = sub.add_parser("convert", help="convert any supported file to a sharded zarr v3 store")
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--codec", default=None, help="codec name (blosc, zstd, gzip, none, histogram, ...)")
    conv.add_argument("--chunks", type=int, nargs=2, metavar=("Y", "X"), help="inner chunk in probe positions")
    conv.add_argument("--shards", type=int, nargs=2, metavar=("Y", "X"), help="shard in probe positions")
    conv.add_argument("--no-shards", action="store_true", help="one file per chunk")
    conv.add_argument("--overwrite", action="store_true")
    conv.add_argument("--quiet", action="store_true", help="no progress bar")
    conv.add_argument("--scheduler", help="dask scheduler address to compute on")
    conv.add_argument("--cluster", action="store_true", help="start a local cluster for the conversion")
    conv.add_argument("--workers", type=_positive_int, default=None, help="workers of a started local cluster")
    _add_reader_args(conv)
    conv.set_defaults(func=cmd_convert)

    comp = sub.add_parser("compress", help="lossy compression onto a mask basis (Diederichs et al.)")
    comp.add_argument("input")
    comp.add_argument("output")
    comp.add_argument("--basis", choices=["data", "pca", "zernike", "binning"], default="data")
    comp.add_argument("--bf", type=int, default=15, help="bright-field masks")
    comp.add_argument("--df", type=int, default=1, help="dark-field masks (1: the mean DF signal)")
    comp.add_argument("--mode", choices=["amplitude", "intensity"], default="amplitude")
    comp.add_argument(
        "--coefficient-dtype",
        dest="coefficient_dtype",
        choices=["float64", "float32"],
        default="float64",
        help="dtype of the stored coefficients and c_perp",
    )
    comp.add_argument(
        "--precision",
        choices=["mixed", "float64"],
        default="mixed",
        help="arithmetic of the projection (mixed: float64 sums and c_perp, float32 only for region-constant masks)",
    )
    comp.add_argument("--seed", type=int, default=0, help="seed of the sampled patterns (data, pca)")
    comp.add_argument("--samples", type=int, default=320, help="patterns sampled for pca")
    comp.add_argument(
        "--basis-from",
        dest="basis_from",
        help="draw the data/pca masks from this scan (a prior acquisition on the same detector), not from INPUT",
    )
    comp.add_argument("--bf-radius-mrad", dest="bf_radius_mrad", type=float, help="default: the semi-angle")
    comp.add_argument("--df-outer-mrad", dest="df_outer_mrad", type=float, help="default: the whole detector")
    comp.add_argument("--overwrite", action="store_true")
    comp.add_argument("--quiet", action="store_true", help="no progress bar")
    comp.add_argument("--scheduler", help="dask scheduler address to compute on")
    _add_reader_args(comp)
    comp.set_defaults(func=cmd_compress)

    ver = sub.add_parser("verify", help="check every chunk of a store (checksums, missing or cut files)")
    ver.add_argument("store")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")
    ver.add_argument("--quiet", action="store_true", help="no progress bar")
    ver.add_argument("--scheduler", help="dask scheduler address to compute on")
    ver.add_argument("--cluster", action="store_true", help="start a local cluster for the check")
    ver.add_argument("--workers", type=_positive_int, default=None, help="workers of a started local cluster")
    ver.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="simulate, store and analyse a dataset end to end on a local cluster")
    demo.add_argument("--output", default="stemdask-demo", help="folder for the store, PNGs and report")
    demo.add_argument("--scheduler", help="dask scheduler address to compute on")
    demo.add_argument("--workers", type=_positive_int, default=2, help="workers of the started local cluster")
    demo.add_argument("--quick", action="store_true", help="a smaller dataset (seconds)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below
        return code
    except BrokenPipeError:
        # the reader (head, less) has gone: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (StemdaskError, OSError) as err:  # OSError: missing, existing or unwritable files, named
        print(f"stemdask {args.command}: error: {cli_advice(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
