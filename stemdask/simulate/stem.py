"""4D-STEM simulation: a lazy, chunk-parallel dataset and its ground truth.

How a pattern is made (see ``docs/simulate.md``):

1. Geometry. The detector has ``detector_shape`` pixels spanning
   ``±max_angle_mrad``, so a pixel is ``2 max_angle / N``. A diffraction
   pattern is the FFT of a real-space window of ``L = λ / pixel`` Å around
   the probe; the window has ``M >= 1.5 N`` pixels of ``d = L / M`` Å, so the
   anti-aliasing band limit (2/3 of Nyquist, ``λ / 3d``) reaches at least
   ``max_angle``. The central ``N`` frequencies of the window's FFT are the
   detector, the beam at pixel ``N // 2`` (``beam_center_px``). Pixels beyond
   the band-limit circle (the detector corners) are zero, as in abTEM. All
   of this is :class:`stemdask.scan_geometry.ScanGeometry`.
2. Specimen. Projected potentials of each slice (Lobato 2014, exact
   sub-pixel positions) on a field that covers every window, transmission
   functions ``exp(iσv)`` band-limited to 2/3; the in-plane cell repeats.
3. Each chunk of probe positions (a dask task) takes its part of the field,
   shifts the probe by a Fourier phase ramp to each position, runs the
   multislice (:func:`stemdask.multislice.multislice_step` for each slice;
   one slice: the projection approximation) and keeps
   ``|B F[ψ_exit]|²`` on the detector, normalised to the fraction of the beam.
4. Partial spatial coherence: Gaussian convolution of the intensities over
   probe positions (σ = ``source_size_A``), computed on extra positions
   around each chunk so no boundary is involved.
5. Dose: Poisson counts with one random stream per probe position.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.fft
import xarray as xr

from .. import optics
from ..checks import integer
from ..checks import pair as _pair
from ..dataset import from_array
from ..errors import bad_type, bad_value
from ..multislice import fft2, multislice_step, propagation_kernel
from ..optics import bandlimit
from ..physics import interaction_constant
from ..scan_geometry import ScanGeometry
from . import dose as _dose
from .potentials import PARAMETRIZATION, atomic_number, slice_potentials
from .potentials import symbol as potentials_symbol
from .samples import AtomicSample, PhaseObject, as_sample

#: padding (Å) of the potential grid beyond the field: atoms outside it and
#: the periodic wrap of the FFT only touch the pad, where tails are < 1e-4 of the peak
POTENTIAL_PAD_A = 5.0
#: a transmission field up to this size is one graph key shared by all chunks
SHARED_FIELD_BYTES = 64 * 2**20
#: probe positions per FFT batch inside a chunk
BATCH = 32
#: default number of probe positions per chunk (at most)
DEFAULT_POSITIONS_PER_CHUNK = 256
#: default chunks keep a chunk's float64 patterns near this size
CHUNK_BYTES = 32 * 2**20


def _positions(
    sample_cell: tuple[float, float, float],
    scan_shape: tuple[int, int],
    step: tuple[float, float],
    origin: tuple[float, float] | None,
) -> tuple[float, float]:
    cell_yx = (sample_cell[1], sample_cell[0])
    if origin is None:
        origin = tuple((cell_yx[a] - (scan_shape[a] - 1) * step[a]) / 2 for a in range(2))
    for a in range(2):
        first = origin[a]
        last = origin[a] + (scan_shape[a] - 1) * step[a]
        if first < -1e-9 or last > cell_yx[a] + 1e-9:
            raise bad_value(
                "scan_shape",
                scan_shape,
                f"a scan inside the sample: along {'yx'[a]} the probe goes from "
                f"{first:.4g} to {last:.4g} Å but the sample is {cell_yx[a]:.4g} Å wide "
                f"(make the sample bigger, e.g. samples.mos2(cells=...), or the scan "
                f"smaller, or move scan_origin_A)",
            )
    return origin  # type: ignore[return-value]


def simulate_4dstem(
    sample: Any,
    *,
    energy_ev: float,
    semiangle_mrad: float,
    aberrations: Mapping[str, float] | None = None,
    scan_shape: Sequence[int],
    scan_step_A: float | Sequence[float],
    detector_shape: int | Sequence[int],
    max_angle_mrad: float | Sequence[float],
    slice_thickness_A: float | None = None,
    dose_e_per_pattern: float | None = None,
    source_size_A: float = 0.0,
    seed: int = 0,
    chunks: Sequence[int] | None = None,
    dose_e_per_A2: float | None = None,
    scan_origin_A: Sequence[float] | None = None,
    sampling_A: float | Sequence[float] | None = None,
    soft_aperture: bool = False,
    backend: str = "numpy",
    frozen_phonons: int = 1,
    vibration_A: float | Mapping[str | int, float] = 0.0,
) -> tuple[xr.DataArray, xr.Dataset]:
    """Simulate a 4D-STEM dataset (lazy, chunk-parallel) and return it with its ground truth.

    Parameters
    ----------
    sample : AtomicSample, PhaseObject or ase.Atoms
        The specimen (see :mod:`stemdask.simulate.samples`); periodic in the
        plane, the beam along z. An ase.Atoms needs an orthorhombic cell.
    energy_ev : float
        Beam energy in eV.
    semiangle_mrad : float
        Probe convergence semi-angle in mrad.
    aberrations : mapping, optional
        Polar aberration coefficients in Å and rad, abTEM's symbols and
        convention (``C10 = -defocus``; ``{"defocus": 100}`` focuses the
        probe 100 Å below the entrance surface). See :mod:`stemdask.optics`.
    scan_shape : (int, int)
        Probe positions (scan_y, scan_x).
    scan_step_A : float or (float, float)
        Probe step in Å.
    detector_shape : int or (int, int)
        Detector pixels (k_y, k_x).
    max_angle_mrad : float or (float, float)
        Half-width of the detector in mrad: pixels are ``2 max_angle / N``.
    slice_thickness_A : float, optional
        Multislice with slices of this thickness (Å); None for the
        projection (single-slice) approximation.
    dose_e_per_pattern : float, optional
        Mean electrons per pattern: the output is then Poisson-distributed
        integer counts (uint8/16/32 as the dose needs); None for the
        noiseless intensity (float32, fraction of the beam per pixel).
    source_size_A : float
        Standard deviation in Å of the Gaussian effective source (partial
        spatial coherence), applied as a convolution of the intensity over
        probe positions; 0 for a coherent probe. Sampled at the scan step, so
        it is accurate when it is not much smaller than the step.
    seed : int
        Seed of the Poisson noise (one stream per probe position).
    chunks : (int, int), optional
        Probe positions per chunk (scan_y, scan_x); default whole rows of up to
        256 positions (fewer for big detectors: about 32 MiB of patterns).
    dose_e_per_A2 : float, optional
        Dose per Å² instead of per pattern (``per_A2 · step_y · step_x``).
    scan_origin_A : (float, float), optional
        Position (y, x) in Å of the first probe in the sample cell; default
        centres the scan on the cell.
    sampling_A : float or (float, float), optional
        Potential sampling in Å; default chosen from the detector (``d = L / M``).
        A coarser sampling than the detector angles need is an error.
    soft_aperture : bool
        Soften the aperture edge over one pixel.
    backend : {"numpy", "cupy"}
        Where each chunk's FFTs run: ``"cupy"`` moves a chunk's specimen and
        probe to the worker's GPU (the patterns come back as numpy arrays).
    frozen_phonons : int
        Number of frozen-phonon configurations whose patterns are averaged
        (thermal diffuse scattering); needs ``vibration_A > 0``.
    vibration_A : float or mapping
        RMS displacement of every atom along each axis (Å), or per element
        (``{"Mo": 0.05, "S": 0.07}``); 0 for a static lattice.

    Returns
    -------
    dataset : xarray.DataArray
        Lazy ``(scan_y, scan_x, k_y, k_x)`` dataset (stemdask data model),
        calibrated, chunked in tiles of probe positions.
    truth : xarray.Dataset
        ``transmission`` (slice, y, x) complex, ``potential`` (slice, y, x)
        and ``projected_potential`` (y, x) in V·Å on the field grid (Å, cell
        frame), ``probe`` (probe_y, probe_x) with ``Σ|ψ|² = 1``, with frozen
        phonons also ``transmission_configurations`` (configuration, slice, y, x),
        ``probe_position_y``/``_x`` (Å), and every parameter in ``attrs``.

    Raises
    ------
    InvalidArgumentError
        For an unknown element, a non-positive dose, a detector angle beyond
        the potential sampling's band limit, a scan outside the sample, a
        probe bigger than the simulation window, and other bad values.

    Examples
    --------
    >>> from stemdask.simulate import simulate_4dstem, samples
    >>> data, truth = simulate_4dstem(samples.mos2(), energy_ev=80e3, semiangle_mrad=25,
    ...                               scan_shape=(8, 8), scan_step_A=0.4,
    ...                               detector_shape=32, max_angle_mrad=50)
    >>> data.shape
    (8, 8, 32, 32)
    """
    sample = as_sample(sample)
    energy_ev = _pair("energy_ev", energy_ev)[0]
    semiangle_mrad = _pair("semiangle_mrad", semiangle_mrad)[0]
    scan_shape = _pair("scan_shape", scan_shape, integer=True)
    step = _pair("scan_step_A", scan_step_A)
    det = _pair("detector_shape", detector_shape, integer=True)
    max_angle = _pair("max_angle_mrad", max_angle_mrad)
    source_size = _pair("source_size_A", source_size_A, allow_zero=True)[0]
    seed = integer("seed", seed, minimum=0)
    dose = _dose.resolve_dose(dose_e_per_pattern, dose_e_per_A2, step)
    if backend not in ("numpy", "cupy"):
        raise bad_value("backend", backend, "'numpy' or 'cupy'")
    coefficients = optics.polar_coefficients(aberrations)
    if not all(isinstance(v, float) for v in coefficients.values()):
        raise bad_type(
            "aberrations",
            aberrations,
            "numbers: the simulator runs on numpy or cupy (tensors that require grad "
            "are for stemdask.optics and stemdask.multislice with torch)",
        )
    if min(det) < 4:
        raise bad_value("detector_shape", detector_shape, "at least 4 pixels along each axis")
    if semiangle_mrad >= min(max_angle):
        raise bad_value(
            "semiangle_mrad",
            semiangle_mrad,
            f"less than max_angle_mrad={min(max_angle)} so the bright field is on the detector",
        )

    frozen_phonons = integer("frozen_phonons", frozen_phonons, expected="a positive integer number of configurations")
    vibration = _vibration(vibration_A, sample)
    if frozen_phonons > 1 and not any(v > 0 for v in vibration.values()):
        raise bad_value("frozen_phonons", frozen_phonons, "1 unless vibration_A > 0 (static atoms)")
    if isinstance(sample, PhaseObject):
        if slice_thickness_A is not None:
            raise bad_value(
                "slice_thickness_A", slice_thickness_A, "None for a PhaseObject (its slices have their own thickness)"
            )
        if sampling_A is not None and tuple(_pair("sampling_A", sampling_A)) != sample.sampling_A:
            raise bad_value("sampling_A", sampling_A, f"None or the PhaseObject's sampling {sample.sampling_A}")
        sampling = sample.sampling_A
    else:
        sampling = None if sampling_A is None else _pair("sampling_A", sampling_A)
        if slice_thickness_A is not None:
            slice_thickness_A = _pair("slice_thickness_A", slice_thickness_A)[0]
    geo = ScanGeometry(energy_ev, det, max_angle, sampling)
    m_y, m_x = geo.window_px
    d_y, d_x = geo.sampling_A
    lam = geo.wavelength_A
    window_A = geo.window_A

    # the probe must fit in the window (else it wraps around and the patterns are wrong)
    radius = optics.geometric_probe_radius_A(energy_ev, semiangle_mrad, coefficients) + 1.22 * lam / (
        semiangle_mrad * 1e-3
    )
    if 2 * radius > 0.9 * min(window_A):
        need = 2 * radius / 0.9
        raise bad_value(
            "detector_shape",
            det,
            f"a simulation window larger than the probe: the probe is about "
            f"{2 * radius:.3g} Å across (aberrations and diffraction) but the window "
            f"λ/pixel is {min(window_A):.3g} Å; use more detector pixels (about "
            f"{math.ceil(need / min(window_A) * min(det))}) at the same max_angle_mrad",
        )

    if scan_origin_A is not None:
        scan_origin_A = _pair("scan_origin_A", scan_origin_A, signed=True)
    origin = _positions(sample.cell_A, scan_shape, step, scan_origin_A)
    sigma_pos = tuple(source_size / step[a] for a in range(2))
    margin = tuple(_dose.margin(s) for s in sigma_pos)

    # field grid (pixel size d): covers the window of every position, margins included
    pos_y = origin[0] + np.arange(-margin[0], scan_shape[0] + margin[0]) * step[0]
    pos_x = origin[1] + np.arange(-margin[1], scan_shape[1] + margin[1]) * step[1]
    f0_px, field_shape = geo.field_px(pos_y, pos_x)
    # each position's window corner in the field and the probe's place in its window (Å)
    (start_y, start_x), (offset_y, offset_x) = geo.windows(pos_y, pos_x, f0_px)
    field_origin_A = (f0_px[0] * d_y, f0_px[1] * d_x)

    potential, static_transmission, configurations, slice_dz, n_slices = _specimen(
        sample, energy_ev, slice_thickness_A, f0_px, field_shape, (d_y, d_x), vibration, int(frozen_phonons), int(seed)
    )
    # the fields the patterns are made from: (configuration, slice, y, x)
    transmission_field = static_transmission[None] if configurations is None else configurations

    probe_k = optics.probe_fourier(
        (m_y, m_x),
        (d_y, d_x),
        energy_ev=energy_ev,
        semiangle_mrad=semiangle_mrad,
        aberrations=coefficients,
        soft=soft_aperture,
        dtype=np.complex64,
    )
    kernel = propagation_kernel((m_y, m_x), (d_y, d_x), energy_ev, slice_dz)
    mask = bandlimit((m_y, m_x))
    out_dtype = np.dtype(np.float32) if dose is None else _dose.count_dtype(dose)

    cy, cx = _chunks(chunks, scan_shape, det)
    n_chunks = math.ceil(scan_shape[0] / cy) * math.ceil(scan_shape[1] / cx)
    # a small specimen is one graph key that every task slices (sent once per worker);
    # a big one is cut into the region of each chunk (memory bounded by the chunk)
    shared = n_chunks > 1 and transmission_field.nbytes <= SHARED_FIELD_BYTES
    field_key = dask.delayed(transmission_field, pure=True) if shared else None
    optics_key = dask.delayed((probe_k, kernel, mask), pure=True)
    blocks = []
    for y0 in range(0, scan_shape[0], cy):
        y1 = min(y0 + cy, scan_shape[0])
        row = []
        for x0 in range(0, scan_shape[1], cx):
            x1 = min(x0 + cx, scan_shape[1])
            # positions of this chunk in the margin-extended index space
            iy = np.arange(y0, y1 + 2 * margin[0])
            ix = np.arange(x0, x1 + 2 * margin[1])
            sy, sx = start_y[iy], start_x[ix]
            bounds = (int(sy.min()), int(sy.max()) + m_y, int(sx.min()), int(sx.max()) + m_x)
            if shared:
                field = field_key
            else:
                field = transmission_field[..., bounds[0] : bounds[1], bounds[2] : bounds[3]]
                bounds = (0, bounds[1] - bounds[0], 0, bounds[3] - bounds[2])
            task = dask.delayed(_simulate_chunk, pure=True)(
                field,
                bounds,
                sy - sy.min(),
                sx - sx.min(),
                offset_y[iy],
                offset_x[ix],
                optics_key,
                geo.detector_runs(),
                (d_y, d_x),
                margin,
                sigma_pos,
                dose,
                int(seed),
                np.arange(y0, y1),
                np.arange(x0, x1),
                out_dtype,
                backend,
            )
            row.append(
                da.from_delayed(
                    task,
                    shape=(y1 - y0, x1 - x0, det[0], det[1]),
                    dtype=out_dtype,
                    meta=np.empty((0, 0, 0, 0), out_dtype),
                )
            )
        blocks.append(row)
    array = da.concatenate([da.concatenate(row, axis=1) for row in blocks], axis=0)

    params = {
        "energy_ev": energy_ev,
        "semiangle_mrad": semiangle_mrad,
        "aberrations": {k: v for k, v in coefficients.items() if v != 0.0},
        "scan_shape": list(scan_shape),
        "scan_step_A": list(step),
        "scan_origin_A": list(origin),
        "detector_shape": list(det),
        "max_angle_mrad": list(max_angle),
        "detector_pixel_mrad": list(geo.detector_pixel_mrad),
        "bandlimit_mrad": list(geo.bandlimit_mrad),
        "potential_sampling_A": [d_y, d_x],
        "window_px": [m_y, m_x],
        "window_A": list(window_A),
        "wavelength_A": lam,
        "interaction_constant_rad_per_V_A": interaction_constant(energy_ev),
        "slice_thickness_A": slice_dz if n_slices > 1 else None,
        "n_slices": n_slices,
        "dose_e_per_pattern": dose,
        "source_size_A": source_size,
        "seed": int(seed),
        "soft_aperture": bool(soft_aperture),
        "sample": sample.name,
        "frozen_phonons": int(frozen_phonons),
        "vibration_A": {potentials_symbol(z): v for z, v in vibration.items()},
        "sample_cell_A": list(sample.cell_A),
        "potential_parametrization": PARAMETRIZATION if isinstance(sample, AtomicSample) else None,
    }
    dataset = from_array(
        array,
        energy_ev=energy_ev,
        semiangle_mrad=semiangle_mrad,
        scan_step_A=step,
        detector_pixel_mrad=geo.detector_pixel_mrad,
        dose_e_per_pattern=dose,
        units="probability" if dose is None else "counts",
        source=f"stemdask.simulate ({sample.name})",
        chunks=(cy, cx),
        attrs={"simulation": _jsonable(params)},
    )
    truth = _truth(
        potential, static_transmission, probe_k, field_origin_A, (d_y, d_x), origin, step, scan_shape, params, sample
    )
    if configurations is not None:
        truth["transmission_configurations"] = (
            ("configuration", "slice", "y", "x"),
            configurations,
            {"long_name": "band-limited transmission of each frozen-phonon configuration"},
        )
    return dataset, truth


def _chunks(chunks: Any, scan_shape: tuple[int, int], det: tuple[int, int]) -> tuple[int, int]:
    """Positions per chunk: given, or whole rows of about 256 positions (fewer for big detectors)."""
    if chunks is None:
        per_chunk = int(np.clip(CHUNK_BYTES // (det[0] * det[1] * 8), 16, DEFAULT_POSITIONS_PER_CHUNK))
        cx = min(scan_shape[1], per_chunk)
        cy = max(1, min(scan_shape[0], per_chunk // cx))
        return cy, cx
    cy, cx = _pair("chunks", chunks, integer=True)
    return min(cy, scan_shape[0]), min(cx, scan_shape[1])


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _vibration(vibration_A: Any, sample: Any) -> dict[int, float]:
    """RMS displacement (Å) per atomic number of the sample's elements."""
    if isinstance(sample, PhaseObject):
        if isinstance(vibration_A, Mapping) or _pair("vibration_A", vibration_A, allow_zero=True)[0] > 0:
            raise bad_value("vibration_A", vibration_A, "0 for a PhaseObject (it has no atoms)")
        return {}
    numbers = sorted(set(sample.numbers.tolist()))
    if isinstance(vibration_A, Mapping):
        given = {}
        for key, value in vibration_A.items():
            given[atomic_number(key)] = _pair(f"vibration_A[{key!r}]", value, allow_zero=True)[0]
        missing = [potentials_symbol(z) for z in numbers if z not in given]
        if missing:
            raise bad_value("vibration_A", dict(vibration_A), f"a value for every element, also {missing}")
        return {z: given[z] for z in numbers}
    value = _pair("vibration_A", vibration_A, allow_zero=True)[0]
    return {z: value for z in numbers}


def _specimen(
    sample: AtomicSample | PhaseObject,
    energy_ev: float,
    slice_thickness_A: float | None,
    f0_px: tuple[int, int],
    field_shape: tuple[int, int],
    sampling: tuple[float, float],
    vibration: dict[int, float],
    frozen_phonons: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float, int]:
    """Slice potentials (V·Å) and band-limited transmission functions on the field grid.

    Returns the static potential and transmission, the transmission of every
    frozen-phonon configuration (None without thermal vibrations), the slice
    thickness and the number of slices.
    """
    d_y, d_x = sampling
    sigma = interaction_constant(energy_ev)
    if isinstance(sample, PhaseObject):
        # band-limit on the object's own periodic grid, then tile it over the field
        n_slices, ny, nx = sample.phase_rad.shape
        t_obj = scipy.fft.ifft2(
            scipy.fft.fft2(np.exp(1j * sample.phase_rad), axes=(-2, -1)) * bandlimit((ny, nx)), axes=(-2, -1)
        )
        iy = (f0_px[0] + np.arange(field_shape[0])) % ny
        ix = (f0_px[1] + np.arange(field_shape[1])) % nx
        potential = sample.phase_rad[:, iy[:, None], ix[None, :]] / sigma
        transmission = t_obj[:, iy[:, None], ix[None, :]]
        return (
            potential.astype(np.float32),
            np.ascontiguousarray(transmission, dtype=np.complex64),
            None,
            float(sample.slice_thickness_A),
            int(n_slices),
        )
    pad = (int(math.ceil(POTENTIAL_PAD_A / d_y)), int(math.ceil(POTENTIAL_PAD_A / d_x)))
    ext_shape = tuple(scipy.fft.next_fast_len(field_shape[a] + 2 * pad[a]) for a in range(2))
    ext_origin = ((f0_px[0] - pad[0]) * d_y, (f0_px[1] - pad[1]) * d_x)
    numbers, positions = _atoms_in_box(sample, ext_origin, (ext_shape[0] * d_y, ext_shape[1] * d_x))
    cz = sample.cell_A[2]
    if slice_thickness_A is None:
        edges = np.array([-np.inf, np.inf])
        dz = cz
    else:
        n = max(1, int(math.ceil(cz / slice_thickness_A - 1e-9)))
        edges = np.arange(n + 1) * slice_thickness_A
        edges[0], edges[-1] = -np.inf, np.inf
        dz = slice_thickness_A
    sl = (slice(None), slice(pad[0], pad[0] + field_shape[0]), slice(pad[1], pad[1] + field_shape[1]))
    mask = bandlimit(ext_shape)

    def fields(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ext = slice_potentials(
            numbers, pos, origin_A=ext_origin, shape=ext_shape, sampling_A=(d_y, d_x), slice_edges_A=edges
        )
        # band-limit the transmission on the (periodic, padded) grid, then crop to the field
        t = scipy.fft.ifft2(scipy.fft.fft2(np.exp(1j * sigma * ext), axes=(-2, -1)) * mask, axes=(-2, -1))
        return ext[sl].astype(np.float32), np.ascontiguousarray(t[sl], dtype=np.complex64)

    potential, transmission = fields(positions)
    configurations = None
    if any(v > 0 for v in vibration.values()):
        rms = np.array([vibration[int(z)] for z in numbers])[:, None]
        configurations = np.empty((frozen_phonons, *transmission.shape), dtype=np.complex64)
        for c in range(frozen_phonons):
            # one stream per configuration (spawn key of length 1: apart from the dose streams)
            rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(c,)))
            configurations[c] = fields(positions + rms * rng.standard_normal(positions.shape))[1]
    return potential, transmission, configurations, float(dz), int(potential.shape[0])


def _atoms_in_box(
    sample: AtomicSample, origin_yx: tuple[float, float], size_yx: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """All periodic images of the sample's atoms with (y, x) inside the box."""
    cx, cy = sample.cell_A[0], sample.cell_A[1]
    nx0, nx1 = math.floor(origin_yx[1] / cx) - 1, math.floor((origin_yx[1] + size_yx[1]) / cx) + 1
    ny0, ny1 = math.floor(origin_yx[0] / cy) - 1, math.floor((origin_yx[0] + size_yx[0]) / cy) + 1
    tx, ty = np.meshgrid(np.arange(nx0, nx1 + 1) * cx, np.arange(ny0, ny1 + 1) * cy, indexing="ij")
    shifts = np.c_[tx.ravel(), ty.ravel(), np.zeros(tx.size)]
    pos = (sample.positions_A[None] + shifts[:, None]).reshape(-1, 3)
    numbers = np.tile(sample.numbers, len(shifts))
    inside = (
        (pos[:, 1] >= origin_yx[0])
        & (pos[:, 1] < origin_yx[0] + size_yx[0])
        & (pos[:, 0] >= origin_yx[1])
        & (pos[:, 0] < origin_yx[1] + size_yx[1])
    )
    return numbers[inside], pos[inside]


def _simulate_chunk(
    field: np.ndarray,
    bounds: tuple[int, int, int, int],
    start_y: np.ndarray,
    start_x: np.ndarray,
    centre_y_A: np.ndarray,
    centre_x_A: np.ndarray,
    optics_arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    runs: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]],
    sampling: tuple[float, float],
    margin: tuple[int, int],
    sigma_positions: tuple[float, float],
    dose: float | None,
    seed: int,
    iy: np.ndarray,
    ix: np.ndarray,
    out_dtype: np.dtype,
    backend: str = "numpy",
) -> np.ndarray:
    """Patterns of one tile of probe positions (plus ``margin`` extra around it).

    ``field[:, bounds]`` is the transmission around the tile; ``start_y``/``_x``
    the window corners in it, ``centre_*_A`` the probe positions in the windows;
    ``optics_arrays`` the probe spectrum, the propagation kernel ``B · P`` and
    the band limit ``B``; ``runs`` the detector crop (:meth:`ScanGeometry.detector_runs`).
    """
    from ..backend import array_module

    probe_k, kernel, mask = optics_arrays
    region = field[..., bounds[0] : bounds[1], bounds[2] : bounds[3]]  # (configuration, slice, y, x)
    if backend == "cupy":
        import cupy

        region, probe_k, kernel, mask = (cupy.asarray(a) for a in (region, probe_k, kernel, mask))

    xp = array_module(region)
    m_y, m_x = probe_k.shape
    runs_y, runs_x = runs
    n_ky = sum(stop - start for _, start, stop in runs_y)
    n_kx = sum(stop - start for _, start, stop in runs_x)
    ny, nx = len(start_y), len(start_x)
    ky = xp.fft.fftfreq(m_y, sampling[0]).astype(np.float32)
    kx = xp.fft.fftfreq(m_x, sampling[1]).astype(np.float32)
    grid_y, grid_x = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    grid_y, grid_x = grid_y.ravel(), grid_x.ravel()
    intensity = np.zeros((ny, nx, n_ky, n_kx), dtype=np.float64)
    # buffers reused by every batch: dask workers return freed memory to the OS
    # at once (MALLOC_TRIM_THRESHOLD_), so fresh big temporaries cost page faults
    batch = min(BATCH, grid_y.size)
    work = xp.empty((batch, m_y, m_x), dtype=np.complex64)
    pattern = xp.empty((batch, n_ky, n_kx), dtype=np.float32)
    for b0, c in itertools.product(range(0, grid_y.size, batch), range(region.shape[0])):
        by, bx = grid_y[b0 : b0 + batch], grid_x[b0 : b0 + batch]
        nb = len(by)
        w = work[:nb]
        # probe moved to each position by a phase ramp (sub-pixel exact)
        ramp_y = xp.exp((-2j * np.pi) * ky[None, :] * xp.asarray(centre_y_A[by], dtype=np.float32)[:, None])
        ramp_x = xp.exp((-2j * np.pi) * kx[None, :] * xp.asarray(centre_x_A[bx], dtype=np.float32)[:, None])
        xp.multiply(probe_k[None], ramp_y[:, :, None], out=w)
        w *= ramp_x[:, None, :]
        w = fft2(w, inverse=True, overwrite=True)
        n_slices = region.shape[1]
        corners = [(int(start_y[by[b]]), int(start_x[bx[b]])) for b in range(nb)]
        for s in range(n_slices):
            # each wave's window of the slice, as views (no copy)
            windows = [region[c, s, y0 : y0 + m_y, x0 : x0 + m_x] for y0, x0 in corners]
            last = s == n_slices - 1
            # after the last slice only the band limit: the propagation is a phase there
            w = multislice_step(w, windows, mask if last else kernel, overwrite=True, return_spectrum=last)
        p = pattern[:nb]
        for dy0, sy0, sy1 in runs_y:
            for dx0, sx0, sx1 in runs_x:
                q = w[:, sy0:sy1, sx0:sx1]
                dst = p[:, dy0 : dy0 + sy1 - sy0, dx0 : dx0 + sx1 - sx0]
                xp.multiply(q.real, q.real, out=dst)
                dst += q.imag * q.imag
        host = p.get() if hasattr(p, "get") else p
        for b in range(nb):
            intensity[by[b], bx[b]] += host[b]
    # frozen phonons: the incoherent average of the configurations' patterns
    intensity /= m_y * m_x * region.shape[0]
    if any(margin):
        intensity = _dose.source_blur(intensity, sigma_positions)
        intensity = intensity[margin[0] : ny - margin[0], margin[1] : nx - margin[1]]
    if dose is None:
        return intensity.astype(np.float32)
    return _dose.poisson_counts(intensity, dose, seed, iy, ix, out_dtype)


def _truth(
    potential: np.ndarray,
    transmission: np.ndarray,
    probe_k: np.ndarray,
    field_origin_A: tuple[float, float],
    sampling: tuple[float, float],
    origin: tuple[float, float],
    step: tuple[float, float],
    scan_shape: tuple[int, int],
    params: dict[str, Any],
    sample: Any,
) -> xr.Dataset:
    n_s, fy, fx = potential.shape
    y = field_origin_A[0] + np.arange(fy) * sampling[0]
    x = field_origin_A[1] + np.arange(fx) * sampling[1]
    m_y, m_x = probe_k.shape
    probe = np.fft.fftshift(np.fft.ifft2(probe_k)).astype(np.complex64)
    coords = {
        "slice": np.arange(n_s),
        "y": xr.Variable("y", y, {"units": "Å", "long_name": "y in the sample cell"}),
        "x": xr.Variable("x", x, {"units": "Å", "long_name": "x in the sample cell"}),
        "probe_y": xr.Variable("probe_y", (np.arange(m_y) - m_y // 2) * sampling[0], {"units": "Å"}),
        "probe_x": xr.Variable("probe_x", (np.arange(m_x) - m_x // 2) * sampling[1], {"units": "Å"}),
        "scan_y": np.arange(scan_shape[0]),
        "scan_x": np.arange(scan_shape[1]),
    }
    data = {
        "transmission": (
            ("slice", "y", "x"),
            transmission,
            {"long_name": "band-limited transmission function exp(iσv)"},
        ),
        "potential": (
            ("slice", "y", "x"),
            potential,
            {"units": "V·Å", "long_name": "projected potential of each slice"},
        ),
        "projected_potential": (
            ("y", "x"),
            potential.sum(0),
            {"units": "V·Å", "long_name": "total projected potential"},
        ),
        "probe": (("probe_y", "probe_x"), probe, {"long_name": "incident probe, sum |ψ|² = 1, centred at (0, 0) Å"}),
        "probe_position_y": (("scan_y",), origin[0] + np.arange(scan_shape[0]) * step[0], {"units": "Å"}),
        "probe_position_x": (("scan_x",), origin[1] + np.arange(scan_shape[1]) * step[1], {"units": "Å"}),
    }
    attrs = dict(params)
    attrs["sample_info"] = dict(getattr(sample, "info", {}))
    return xr.Dataset(data, coords=coords, attrs=attrs)
