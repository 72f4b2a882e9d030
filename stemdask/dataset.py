"""The stemdask 4D-STEM data model: build, check and describe datasets.

A dense dataset is an :class:`xarray.DataArray` with dims
``("scan_y", "scan_x", "k_y", "k_x")`` whose data is (normally) a dask array
chunked in whole detector frames and tiles of scan positions.

* ``scan_y``/``scan_x`` coordinates are probe positions in Å (``units="Å"``),
  or scan pixel indices (``units="px"``) when the scan step is unknown.
* ``k_y``/``k_x`` coordinates are scattering angles in mrad centred on the
  unscattered beam (``units="mrad"``), or detector pixels relative to the beam
  centre (``units="px"``) when the detector calibration is unknown.
* attrs (present only when known): ``energy_ev``, ``semiangle_mrad``,
  ``scan_step_A`` ([y, x]), ``detector_pixel_mrad`` ([y, x]),
  ``beam_center_px`` ([y, x], the beam position on the detector in pixels),
  ``scan_origin_A`` ([y, x], the stage position of the first probe position:
  the ``scan_y``/``scan_x`` coordinates start there), ``scan_rotation_deg``,
  ``dose_e_per_pattern``, ``units`` (of the values) and ``source``.

Chunking is not part of the contract: a dataset may be chunked along any dim
(SSB, for one, wants every probe position for a subset of detector pixels).
The kernels that need whole detector frames per chunk say so through
:func:`require_whole_frames`.

Unknown calibration is allowed (a real Merlin file carries none) and is
represented by a missing attribute, never by NaN; operations that need it
raise :class:`~stemdask.errors.MissingCalibrationError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .checks import close, number, pair
from .errors import (
    DatasetContractError,
    InvalidArgumentError,
    MissingCalibrationError,
    bad_type,
    bad_value,
)

DIMS: tuple[str, str, str, str] = ("scan_y", "scan_x", "k_y", "k_x")
SCAN_DIMS: tuple[str, str] = DIMS[:2]
DETECTOR_DIMS: tuple[str, str] = DIMS[2:]

#: calibration attributes that are pairs (y, x)
PAIR_ATTRS = ("scan_step_A", "detector_pixel_mrad", "beam_center_px", "scan_origin_A")
#: pair attributes that may take any sign
SIGNED_PAIR_ATTRS = ("beam_center_px", "scan_origin_A")
#: calibration attributes that are positive scalars
POSITIVE_ATTRS = ("energy_ev", "semiangle_mrad", "dose_e_per_pattern")
#: every calibration attribute of the data model, in the order they are shown
CALIBRATION_ATTRS: tuple[str, ...] = (
    "energy_ev",
    "semiangle_mrad",
    "scan_step_A",
    "scan_origin_A",
    "detector_pixel_mrad",
    "beam_center_px",
    "scan_rotation_deg",
    "dose_e_per_pattern",
)
#: calibration plus the descriptive attrs that :func:`calibrate` and :func:`describe` handle
MODEL_ATTRS: tuple[str, ...] = (*CALIBRATION_ATTRS, "units", "source")

#: target bytes of one default chunk (whole frames, a tile of scan positions)
DEFAULT_CHUNK_BYTES = 64 * 2**20


def _positive_scalar(name: str, value: Any, *, allow_zero: bool = False) -> float:
    return number(name, value, allow_zero=allow_zero)


def _pair(name: str, value: Any, *, positive: bool = True) -> list[float]:
    """Normalise a scalar or a (y, x) pair to a list of two floats (JSON-friendly attrs)."""
    return [float(v) for v in pair(name, value, signed=not positive)]


def default_chunks(
    shape: Sequence[int], itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, int, int, int]:
    """Chunks of whole frames and a tile of scan positions of about ``target_bytes``.

    The tile is whole scan rows when a row fits, else a part of one row, so a
    chunk is contiguous in a C-ordered file.
    """
    ny, nx, ky, kx = (int(s) for s in shape)
    frame = max(ky * kx * itemsize, 1)
    frames = max(target_bytes // frame, 1)
    if frames >= nx:
        return (max(min(ny, frames // max(nx, 1)), 1), nx, ky, kx)
    return (1, max(frames, 1), ky, kx)


def scan_coords(n: int, step_A: float | None, dim: str, origin_A: float = 0.0) -> xr.Variable:
    """Probe-position coordinate: stage positions in Å from ``origin_A``, or scan pixels.

    Without a known step the coordinate is the scan pixel index (``units="px"``)
    and ``origin_A`` does not enter it.
    """
    if step_A is None:
        return xr.Variable(dim, np.arange(n, dtype=np.float64), {"units": "px", "long_name": dim})
    return xr.Variable(
        dim,
        origin_A + np.arange(n, dtype=np.float64) * step_A,
        {"units": "Å", "long_name": f"probe position {dim[-1]}"},
    )


def detector_coords(n: int, pixel_mrad: float | None, center_px: float, dim: str) -> xr.Variable:
    """Detector coordinate in mrad centred on the beam (pixels when uncalibrated)."""
    pixels = np.arange(n, dtype=np.float64) - center_px
    if pixel_mrad is None:
        return xr.Variable(dim, pixels, {"units": "px", "long_name": f"detector {dim[-1]} from beam centre"})
    return xr.Variable(dim, pixels * pixel_mrad, {"units": "mrad", "long_name": f"scattering angle {dim[-1]}"})


def _as_dask(array: Any, chunks: Any) -> da.Array:
    if chunks is not None:
        chunks = _check_chunks(chunks)
    if isinstance(array, xr.DataArray):
        array = array.data
    if isinstance(array, da.Array):
        arr = array
    elif hasattr(array, "__array_function__") or isinstance(array, np.ndarray):
        if getattr(array, "ndim", 0) == 4 and chunks is None:
            chunks = default_chunks(array.shape, array.dtype.itemsize)
        if isinstance(chunks, tuple) and len(chunks) == 2:
            chunks = (*chunks, -1, -1)
        # chunked directly (no rechunk, so no copy per compute); asarray=False keeps cupy chunks
        arr = da.from_array(array, chunks=chunks if getattr(array, "ndim", 0) == 4 else -1, asarray=False)
    else:
        raise bad_type("array", array, "a numpy, dask or cupy array")
    if arr.ndim != 4:
        raise bad_value(
            "array", f"<{arr.ndim}-D array of shape {arr.shape}>", "a 4-D array ordered (scan_y, scan_x, k_y, k_x)"
        )
    if arr.dtype.kind == "c":
        # intensities are real: a complex array would lose its imaginary part in every detector
        raise bad_value(
            "array",
            f"<array of dtype {arr.dtype}>",
            "real intensities (integer or float); for complex waves pass abs(psi)**2 (intensities) "
            "or the real and imaginary parts as two datasets",
        )
    if arr.dtype.kind not in "uif":
        raise bad_value("array", f"<array of dtype {arr.dtype}>", "a numeric dtype (integer or float)")
    if 0 in arr.shape:
        raise bad_value(
            "array", f"<array of shape {arr.shape}>", "at least one probe position and one detector pixel per dim"
        )
    if not arr.dtype.isnative:
        # numba and CuPy need native byte order; values are unchanged
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if chunks is None:
        if isinstance(array, da.Array):
            # a lazy input keeps its scan tiling; frames become whole
            return arr if len(arr.chunks[2]) == len(arr.chunks[3]) == 1 else arr.rechunk({2: -1, 3: -1})
        chunks = default_chunks(arr.shape, arr.dtype.itemsize)
    return arr.rechunk(_check_chunks(chunks))


def _check_chunks(chunks: Any) -> Any:
    """Dask chunks of a dataset: (scan_y, scan_x) or 4 sizes, each a positive integer or -1 (whole dim)."""
    expected = "(scan_y, scan_x) or (scan_y, scan_x, k_y, k_x) chunk sizes: positive integers, or -1 for a whole dim"
    if isinstance(chunks, (str, int, float)) or not isinstance(chunks, (Sequence, np.ndarray)):
        raise bad_value("chunks", chunks, expected)
    items = tuple(chunks)
    if len(items) == 2:
        items = (*items, -1, -1)
    for item in items:
        if isinstance(item, (tuple, list)) and all(_is_size(i, allow_whole=False) for i in item) and item:
            continue  # explicit dask chunks along a dim
        if not _is_size(item):
            raise bad_value("chunks", chunks, expected)
    if len(items) != 4:
        raise bad_value("chunks", chunks, expected)
    return items


def _is_size(value: Any, allow_whole: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return bool(value >= 1 or (allow_whole and value == -1))


def from_array(
    array: Any,
    *,
    energy_ev: float | None = None,
    semiangle_mrad: float | None = None,
    scan_step_A: float | Sequence[float] | None = None,
    detector_pixel_mrad: float | Sequence[float] | None = None,
    beam_center_px: Sequence[float] | None = None,
    scan_origin_A: float | Sequence[float] | None = None,
    scan_rotation_deg: float = 0.0,
    dose_e_per_pattern: float | None = None,
    units: str = "counts",
    source: str = "array",
    chunks: Any = None,
    name: str = "intensity",
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Wrap a 4-D array as a calibrated, lazy stemdask dataset.

    Parameters
    ----------
    array : numpy.ndarray, dask.array.Array or cupy.ndarray
        Intensities ordered ``(scan_y, scan_x, k_y, k_x)``. Big-endian data
        become native-endian (same values).
    energy_ev : float, optional
        Beam energy in eV.
    semiangle_mrad : float, optional
        Probe-forming (convergence) semi-angle in mrad.
    scan_step_A : float or (float, float), optional
        Probe step in Å, one value or (y, x).
    detector_pixel_mrad : float or (float, float), optional
        Angular size of one detector pixel in mrad, one value or (y, x).
    beam_center_px : (float, float), optional
        Position of the unscattered beam on the detector in pixels (y, x);
        default the FFT centre ``(k_y // 2, k_x // 2)``.
    scan_origin_A : float or (float, float), optional
        Stage position (y, x) in Å of the first probe position; the scan
        coordinates start there (default 0). Tiles of a montage carry their
        own origins.
    scan_rotation_deg : float
        Rotation of the scan relative to the detector in degrees.
    dose_e_per_pattern : float, optional
        Mean number of electrons per diffraction pattern.
    units : str
        Units of the values (``"counts"``, ``"electrons"``, ``"a.u."``...).
    source : str
        Where the data came from (file name, simulation, ...).
    chunks : tuple, optional
        ``(scan_y, scan_x)`` chunks (whole frames) or full 4-D chunks.
        Default: whole frames in tiles of about 64 MiB (a lazy input keeps
        its scan tiling).
    name : str
        Name of the DataArray.
    attrs : mapping, optional
        Extra attributes (e.g. the file's original metadata).

    Returns
    -------
    xarray.DataArray
        Lazy dataset following the stemdask data model (see :func:`validate`).

    Examples
    --------
    >>> import numpy as np, stemdask
    >>> data = stemdask.from_array(np.zeros((4, 5, 16, 16), "uint16"), energy_ev=300e3,
    ...                            semiangle_mrad=20, scan_step_A=0.5, detector_pixel_mrad=1.0)
    >>> data.dims
    ('scan_y', 'scan_x', 'k_y', 'k_x')
    """
    arr = _as_dask(array, chunks)
    ny, nx, nky, nkx = arr.shape
    out_attrs: dict[str, Any] = {}
    if energy_ev is not None:
        out_attrs["energy_ev"] = _positive_scalar("energy_ev", energy_ev)
    if semiangle_mrad is not None:
        out_attrs["semiangle_mrad"] = _positive_scalar("semiangle_mrad", semiangle_mrad)
    step = _pair("scan_step_A", scan_step_A) if scan_step_A is not None else None
    pixel = _pair("detector_pixel_mrad", detector_pixel_mrad) if detector_pixel_mrad is not None else None
    center = (
        _pair("beam_center_px", beam_center_px, positive=False)
        if beam_center_px is not None
        else [float(nky // 2), float(nkx // 2)]
    )
    origin = _pair("scan_origin_A", scan_origin_A, positive=False) if scan_origin_A is not None else None
    if step is not None:
        out_attrs["scan_step_A"] = step
    if origin is not None:
        out_attrs["scan_origin_A"] = origin
    if pixel is not None:
        out_attrs["detector_pixel_mrad"] = pixel
    out_attrs["beam_center_px"] = center
    out_attrs["scan_rotation_deg"] = number(
        "scan_rotation_deg", scan_rotation_deg, signed=True, expected="a finite angle in degrees"
    )
    if dose_e_per_pattern is not None:
        out_attrs["dose_e_per_pattern"] = _positive_scalar("dose_e_per_pattern", dose_e_per_pattern)
    if not isinstance(units, str) or not units:
        raise bad_value("units", units, "a non-empty string")
    out_attrs["units"] = units
    out_attrs["source"] = str(source)
    if attrs:
        for key, value in attrs.items():
            out_attrs.setdefault(key, value)
    coords = {
        "scan_y": scan_coords(ny, step[0] if step else None, "scan_y", origin[0] if origin else 0.0),
        "scan_x": scan_coords(nx, step[1] if step else None, "scan_x", origin[1] if origin else 0.0),
        "k_y": detector_coords(nky, pixel[0] if pixel else None, center[0], "k_y"),
        "k_x": detector_coords(nkx, pixel[1] if pixel else None, center[1], "k_x"),
    }
    return xr.DataArray(arr, dims=DIMS, coords=coords, attrs=out_attrs, name=name)


def _check_axis(data: xr.DataArray, dim: str, step: float | None, expected_units: str) -> None:
    if dim not in data.coords:
        raise DatasetContractError(f"coordinate {dim!r} is missing: every dim needs a calibrated coordinate")
    coord = data.coords[dim]
    if coord.dims != (dim,):
        raise DatasetContractError(f"coordinate {dim!r} has dims {coord.dims}: expected ({dim!r},)")
    values = np.asarray(coord.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DatasetContractError(f"coordinate {dim!r} holds non-finite values")
    units = coord.attrs.get("units")
    if units != expected_units:
        raise DatasetContractError(
            f"coordinate {dim!r} has units={units!r}: expected {expected_units!r} "
            f"(from the dataset's calibration attrs)"
        )
    if values.size > 1:
        diffs = np.diff(values)
        spacing = step if step is not None else 1.0
        if not close(diffs, spacing, rtol=1e-6, atol=1e-9 * abs(spacing)):
            raise DatasetContractError(
                f"coordinate {dim!r} is not uniformly spaced by {spacing} {expected_units} "
                f"(spacing found: {diffs.min():.6g}..{diffs.max():.6g}); coordinates and "
                f"calibration attrs disagree"
            )


def validate(data: xr.DataArray) -> xr.DataArray:
    """Check that ``data`` follows the stemdask 4D-STEM data model.

    Checks dims and their order, calibrated coordinates consistent with the
    calibration attrs and positive finite calibration values. Chunking is
    free (see :func:`require_whole_frames` for the kernels that need whole
    frames). Returns ``data`` unchanged so calls can be chained.

    Raises
    ------
    DatasetContractError
        Naming the first problem found.
    """
    if not isinstance(data, xr.DataArray):
        raise bad_type("data", data, "an xarray.DataArray (use stemdask.from_array to make one)")
    if data.ndim != 4:
        raise DatasetContractError(f"data has {data.ndim} dims {data.dims}: expected 4 dims {DIMS}")
    if tuple(data.dims) != DIMS:
        raise DatasetContractError(f"data has dims {tuple(data.dims)}: expected {DIMS} in this order")
    attrs = data.attrs
    for key in POSITIVE_ATTRS:
        if key in attrs:
            try:
                _positive_scalar(key, attrs[key])
            except (InvalidArgumentError, TypeError) as err:
                raise DatasetContractError(f"attribute {err}") from None
    for key in PAIR_ATTRS:
        if key in attrs:
            try:
                _pair(key, attrs[key], positive=key not in SIGNED_PAIR_ATTRS)
            except (InvalidArgumentError, TypeError) as err:
                raise DatasetContractError(f"attribute {err}") from None
    step = attrs.get("scan_step_A")
    pixel = attrs.get("detector_pixel_mrad")
    for i, dim in enumerate(SCAN_DIMS):
        _check_axis(data, dim, None if step is None else float(step[i]), "px" if step is None else "Å")
    for i, dim in enumerate(DETECTOR_DIMS):
        _check_axis(data, dim, None if pixel is None else float(pixel[i]), "px" if pixel is None else "mrad")
    return data


def dask_data(data: xr.DataArray) -> da.Array:
    """The dask array of a DataArray (a numpy- or cupy-backed one becomes one chunk, not copied)."""
    arr = data.data
    return arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=-1, asarray=False)


def require_whole_frames(data: xr.DataArray | da.Array, operation: str = "this operation") -> None:
    """Raise unless every chunk of ``data`` holds whole detector frames.

    For the kernels that work frame by frame (mask projections, counting,
    event conversion, the histogram codec's writer); other operations accept
    any chunking, e.g. all probe positions for a subset of detector pixels.
    """
    arr = data.data if isinstance(data, xr.DataArray) else data
    if isinstance(arr, da.Array) and (len(arr.chunks[2]) != 1 or len(arr.chunks[3]) != 1):
        raise DatasetContractError(
            f"{operation} needs chunks of whole detector frames, but the data are chunked along "
            f"the detector dims {arr.chunks[2:]}; rechunk with {{'k_y': -1, 'k_x': -1}}"
        )


def require(data: xr.DataArray, *keys: str) -> list[Any]:
    """Return calibration attrs ``keys`` or raise a MissingCalibrationError naming them."""
    missing = [k for k in keys if k not in data.attrs]
    if missing:
        raise MissingCalibrationError(
            f"this operation needs the calibration {missing} which the dataset does not carry; "
            f"set it with stemdask.calibrate(data, {missing[0]}=...) or pass it when opening"
        )
    return [data.attrs[k] for k in keys]


def calibrate(data: xr.DataArray, **calibration: Any) -> xr.DataArray:
    """Return a copy of ``data`` with calibration updated (coords follow the attrs).

    Accepts the keyword arguments of :func:`from_array` that set calibration
    (:data:`MODEL_ATTRS`: ``energy_ev``, ``semiangle_mrad``, ``scan_step_A``,
    ``scan_origin_A``, ``detector_pixel_mrad``, ``beam_center_px``,
    ``scan_rotation_deg``, ``dose_e_per_pattern``, ``units``, ``source``).
    """
    allowed = set(MODEL_ATTRS)
    unknown = set(calibration) - allowed
    if unknown:
        raise bad_value("calibration", sorted(unknown), f"keywords among {sorted(allowed)}")
    merged = {k: data.attrs[k] for k in allowed if k in data.attrs}
    merged.update({k: v for k, v in calibration.items()})
    extra = {k: v for k, v in data.attrs.items() if k not in allowed}
    merged = {k: v for k, v in merged.items() if v is not None}
    # the chunking stays as it is (a detector-split layout too)
    chunks = data.data.chunks if isinstance(data.data, da.Array) else None
    return from_array(data.data, chunks=chunks, name=str(data.name or "intensity"), attrs=extra, **merged)


def describe(data: xr.DataArray) -> dict[str, Any]:
    """Summary of a dataset: shape, dtype, chunks, calibration (None if unknown)."""
    arr = data.data
    chunks = tuple(c[0] for c in arr.chunks) if isinstance(arr, da.Array) else tuple(data.shape)
    keys = MODEL_ATTRS
    return {
        "shape": tuple(int(s) for s in data.shape),
        "dtype": str(data.dtype),
        "chunks": chunks,
        "nbytes": int(data.nbytes),
        **{k: data.attrs.get(k) for k in keys},
    }


# the `.stem` accessor is registered with the data model, whichever module a session imports first
from . import accessor as _accessor  # noqa: E402, F401
