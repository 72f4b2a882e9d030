"""Compress an acquisition as it arrives: a basis from its first patterns, then only coefficients.

:class:`CompressedWriter` is the lossy counterpart of
:class:`stemdask.io.DatasetWriter`: scan rows are handed to :meth:`append`
as the detector delivers them; the first ``n_first`` patterns are kept in
memory until the basis can be built from them (a data basis draws its
``n_bf`` patterns at random among them, seeded), then every row is
compressed by :func:`~stemdask.compression.compress` and only its
coefficients and perpendicular norms are written. With a basis given up
front (from a quick prior scan, say) nothing is buffered. The store has the
``"compressed"`` layout, is marked incomplete until :meth:`close`, and opens
with :func:`stemdask.open_dataset`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..checks import integer
from ..dataset import from_array
from ..errors import IncompleteStoreError, bad_type, bad_value
from ..io.publish import COMPLETE_ATTR, header, is_local
from .bases import BASIS_KINDS, make_basis
from .compress import PRECISIONS, check_basis, compress
from .regions import detector_regions
from .storage import FORMAT_VERSION, LAYOUT, array, create_arrays, write_tile


class CompressedWriter:
    """Write a compressed store row by row as an acquisition arrives.

    Parameters
    ----------
    store : path
        Destination (must not exist unless ``overwrite``).
    scan_x : int
        Probe positions per scan row.
    detector_shape : (int, int)
        Frame shape in pixels.
    basis : {"data", "pca", "zernike", "binning"} or xarray.DataArray
        A kind for :func:`~stemdask.compression.bases.make_basis` (built from
        the first ``n_first`` patterns), or a ready basis for this detector.
    n_bf, n_df : int
        Masks in the BF and the DF region (for a basis kind).
    n_first : int, optional
        Patterns buffered to build the basis (default ``max(4 n_bf, 64)``,
        rounded up to whole rows).
    mode : {"amplitude", "intensity"}
    seed : int
        Seed of the random draw of the data/PCA basis.
    dtype : {"float64", "float32"}
        Stored coefficient precision.
    precision : {"mixed", "float64"}
        Arithmetic of :func:`~stemdask.compression.compress` (default mixed).
    codec : str, optional
        Lossless codec of the stored arrays.
    bf_radius_mrad, df_outer_mrad : float, optional
        Regions (default the semi-angle and the whole detector).
    **calibration
        Keywords of :func:`stemdask.from_array` (``energy_ev``,
        ``semiangle_mrad``, ``scan_step_A``, ``detector_pixel_mrad``, ...);
        the detector must be calibrated.
    """

    def __init__(
        self,
        store: str | os.PathLike,
        *,
        scan_x: int,
        detector_shape: Sequence[int],
        basis: str | xr.DataArray = "data",
        n_bf: int = 15,
        n_df: int = 1,
        n_first: int | None = None,
        mode: str = "amplitude",
        seed: int = 0,
        dtype: Any = "float64",
        precision: str = "mixed",
        codec: Any = None,
        overwrite: bool = False,
        bf_radius_mrad: float | None = None,
        df_outer_mrad: float = math.inf,
        **calibration: Any,
    ):
        if not is_local(store):
            raise bad_type("store", store, "a local path for incremental writes")
        self.path = Path(store).expanduser().absolute()
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"store {str(self.path)!r} exists: pass overwrite=True to replace it")
            shutil.rmtree(self.path)
        self.scan_x = integer("scan_x", scan_x)
        ky, kx = (integer("detector_shape", int(v)) for v in detector_shape)
        self.detector_shape = (ky, kx)
        self.calibration = dict(calibration)
        template = from_array(da.zeros((1, self.scan_x, ky, kx), chunks=-1), **self.calibration)
        self.regions = detector_regions(template, bf_radius_mrad=bf_radius_mrad, df_outer_mrad=df_outer_mrad)
        if isinstance(basis, xr.DataArray):
            self.basis: xr.DataArray | None = check_basis(basis, template)
        elif basis in BASIS_KINDS:
            self.basis = None
        else:
            raise bad_value("basis", basis, f"one of {BASIS_KINDS} or a basis DataArray")
        self.kind = basis if isinstance(basis, str) else None
        self.n_bf, self.n_df = integer("n_bf", n_bf), integer("n_df", n_df, minimum=0)
        first = max(4 * self.n_bf, 64) if n_first is None else integer("n_first", n_first)
        self.n_first_rows = -(-first // self.scan_x)
        self.mode, self.seed, self.dtype, self.codec = mode, int(seed), dtype, codec
        if not (isinstance(precision, str) and precision in PRECISIONS):
            raise bad_value("precision", precision, f"one of {list(PRECISIONS)}")
        self.precision = precision
        self._buffer: list[np.ndarray] = []
        self._group: zarr.Group | None = None
        self.rows = 0
        self.closed = False
        self._step_y = template.attrs.get("scan_step_A", [None])[0]
        self._origin_y = template.attrs.get("scan_origin_A", [0.0])[0]
        if self.path.parent:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _rows_dataset(self, rows: np.ndarray, first_row: int) -> xr.DataArray:
        cal = dict(self.calibration)
        if self._step_y is not None:
            origin = cal.get("scan_origin_A", [0.0, 0.0])
            origin = [origin, origin] if not isinstance(origin, (list, tuple)) else list(origin)
            cal["scan_origin_A"] = [float(origin[0]) + first_row * float(self._step_y), float(origin[1])]
        return from_array(rows, chunks=(rows.shape[0], self.scan_x), **cal)

    def _write_rows(self, rows: np.ndarray) -> None:
        assert self.basis is not None
        part = compress(
            self._rows_dataset(rows, self.rows), self.basis, mode=self.mode, dtype=self.dtype, precision=self.precision
        ).compute()
        n = rows.shape[0]
        if self._group is None:
            group = zarr.open_group(self.path, mode="w-", zarr_format=3)
            group.attrs.update(header(LAYOUT, FORMAT_VERSION))
            create_arrays(group, part, (n, self.scan_x), (1, self.scan_x), self.codec)
            self._group = group
        else:
            total = self.rows + n
            for name in ("coefficients", "c_perp_bf", "c_perp_df"):
                arr = array(self._group, name)
                arr.resize((total, *arr.shape[1:]))
            scan_y = array(self._group, "scan_y")
            scan_y.resize((total,))
            scan_y[self.rows :] = part.coords["scan_y"].values
        write_tile(
            None,
            self._group,
            self.rows,
            0,
            part["coefficients"].values,
            part["c_perp_bf"].values,
            part["c_perp_df"].values,
        )
        self.rows += n

    def append(self, rows: Any) -> None:
        """Compress and store whole scan rows ``(n_rows, scan_x, k_y, k_x)`` at the end of the scan."""
        if self.closed:
            raise IncompleteStoreError(f"writer for {str(self.path)!r} is closed")
        rows = np.asarray(rows)
        want = (self.scan_x, *self.detector_shape)
        if rows.ndim != 4 or rows.shape[0] < 1 or rows.shape[1:] != want:
            raise bad_value("rows", f"<array of shape {rows.shape}>", f"shape (n_rows, {', '.join(map(str, want))})")
        if self.basis is not None:
            self._write_rows(rows)
            return
        self._buffer.append(rows)
        if sum(r.shape[0] for r in self._buffer) >= self.n_first_rows:
            self._build_basis()

    def _build_basis(self) -> None:
        buffered = np.concatenate(self._buffer)
        self._buffer = []
        sample = self._rows_dataset(buffered, 0)
        assert self.kind is not None
        self.basis = make_basis(
            sample, self.kind, n_bf=self.n_bf, n_df=self.n_df, mode=self.mode, seed=self.seed, regions=self.regions
        )
        self.basis.attrs["source"] = f"first {buffered.shape[0] * self.scan_x} patterns of the acquisition"
        self._write_rows(buffered)

    def close(self) -> None:
        """Compress what is still buffered and mark the store complete (it now opens)."""
        if self.closed:
            return
        if self.basis is None:
            if not self._buffer:
                raise IncompleteStoreError(f"writer for {str(self.path)!r} received no rows")
            self._build_basis()
        assert self._group is not None
        self._group.attrs.update({COMPLETE_ATTR: True})
        self.closed = True

    def __enter__(self) -> CompressedWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # a failed acquisition stays marked incomplete
        if exc_type is None:
            self.close()


__all__ = ["CompressedWriter"]
