"""Specimens for the simulator: crystals as atoms in an orthorhombic cell, and phase objects.

A sample is periodic in the plane (its cell repeats, as in abTEM); scan
positions are given in the cell's frame (Å, origin at the cell corner).

* :class:`AtomicSample`: atomic numbers, positions ``(x, y, z)`` in Å (the
  ase order) and an orthorhombic cell; built by :func:`mos2`,
  :func:`graphene`, :func:`silicon_110`, :func:`srtio3_001` or from any
  ``ase.Atoms`` with :func:`from_ase` (or passed directly to the simulator).
* :class:`PhaseObject`: a given transmission phase per slice on a fixed grid,
  e.g. :func:`weak_phase_object` (white noise) for algorithm tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..checks import integer
from ..errors import bad_type, bad_value
from .potentials import atomic_number


@dataclass(frozen=True)
class AtomicSample:
    """Atoms in an orthorhombic, in-plane periodic cell.

    Attributes
    ----------
    numbers : (n,) int array
        Atomic numbers (1-92).
    positions_A : (n, 3) float array
        Positions ``(x, y, z)`` in Å, inside the cell.
    cell_A : (float, float, float)
        Cell lengths ``(x, y, z)`` in Å; z is the beam direction (thickness).
    name : str
        Description, kept in the ground truth.
    info : dict
        Extra facts (e.g. the vacancy position).
    """

    numbers: np.ndarray
    positions_A: np.ndarray
    cell_A: tuple[float, float, float]
    name: str = "atoms"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        numbers = np.asarray(self.numbers)
        positions = np.asarray(self.positions_A, dtype=np.float64)
        if numbers.ndim != 1 or positions.shape != (numbers.size, 3):
            raise bad_value(
                "positions_A",
                f"<array of shape {positions.shape}>",
                f"an (n, 3) array matching {numbers.size} atomic numbers",
            )
        numbers = np.array([atomic_number(int(z)) for z in numbers], dtype=np.int64)
        cell = tuple(float(c) for c in self.cell_A)
        if len(cell) != 3 or not all(math.isfinite(c) and c > 0 for c in cell):
            raise bad_value("cell_A", self.cell_A, "three positive cell lengths (x, y, z) in Å")
        if not np.all(np.isfinite(positions)):
            raise bad_value("positions_A", "<non-finite positions>", "finite positions in Å")
        object.__setattr__(self, "numbers", numbers)
        object.__setattr__(self, "positions_A", positions)
        object.__setattr__(self, "cell_A", cell)

    def repeat(self, nx: int = 1, ny: int = 1, nz: int = 1) -> AtomicSample:
        """The sample tiled ``nx × ny × nz`` times."""
        for name, n in (("nx", nx), ("ny", ny), ("nz", nz)):
            integer(name, n, expected="a positive integer number of repeats")
        shifts = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1).reshape(
            -1, 3
        ) * np.asarray(self.cell_A)
        positions = (self.positions_A[None] + shifts[:, None]).reshape(-1, 3)
        numbers = np.tile(self.numbers, len(shifts))
        cell = (self.cell_A[0] * nx, self.cell_A[1] * ny, self.cell_A[2] * nz)
        return AtomicSample(numbers, positions, cell, self.name, dict(self.info))

    def to_ase(self) -> Any:
        """The sample as ``ase.Atoms`` (needs ase)."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions_A, cell=self.cell_A, pbc=True)


@dataclass(frozen=True)
class PhaseObject:
    """A specimen given directly as a transmission phase (rad) per slice.

    Attributes
    ----------
    phase_rad : (n_slices, ny, nx) float array
        Phase shift of each slice; the transmission is ``exp(i phase)``.
    sampling_A : (float, float)
        Pixel size ``(dy, dx)`` in Å; it fixes the simulation grid, so the
        detector angles must stay within its band limit.
    slice_thickness_A : float
        Distance between slices (used when there is more than one).
    name : str
        Description.
    """

    phase_rad: np.ndarray
    sampling_A: tuple[float, float]
    slice_thickness_A: float = 1.0
    name: str = "phase object"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        phase = np.asarray(self.phase_rad, dtype=np.float64)
        if phase.ndim == 2:
            phase = phase[None]
        if phase.ndim != 3 or min(phase.shape) < 1:
            raise bad_value(
                "phase_rad",
                f"<array of shape {phase.shape}>",
                "a (ny, nx) or (n_slices, ny, nx) array of phases in rad",
            )
        if not np.all(np.isfinite(phase)):
            raise bad_value("phase_rad", "<non-finite phases>", "finite phases in rad")
        sampling = self.sampling_A
        if np.isscalar(sampling):
            sampling = (sampling, sampling)
        sampling = tuple(float(s) for s in sampling)
        if len(sampling) != 2 or not all(math.isfinite(s) and s > 0 for s in sampling):
            raise bad_value("sampling_A", self.sampling_A, "a positive pixel size in Å or a (y, x) pair")
        if not (math.isfinite(self.slice_thickness_A) and self.slice_thickness_A > 0):
            raise bad_value("slice_thickness_A", self.slice_thickness_A, "a positive thickness in Å")
        object.__setattr__(self, "phase_rad", phase)
        object.__setattr__(self, "sampling_A", sampling)

    @property
    def cell_A(self) -> tuple[float, float, float]:
        """Cell lengths ``(x, y, z)`` in Å."""
        s, ny, nx = self.phase_rad.shape
        return (nx * self.sampling_A[1], ny * self.sampling_A[0], s * self.slice_thickness_A)


def from_ase(atoms: Any) -> AtomicSample:
    """Convert an ``ase.Atoms`` with an orthorhombic cell to an :class:`AtomicSample`.

    Positions are wrapped into the cell. A non-orthorhombic cell raises an
    error (rotate or make an orthogonal supercell first, e.g. with
    ``ase.build.make_supercell`` or abTEM's ``orthogonalize_cell``).
    """
    cell = np.asarray(atoms.cell.array if hasattr(atoms.cell, "array") else atoms.cell, dtype=float)
    if cell.shape != (3, 3) or not np.allclose(cell - np.diag(np.diag(cell)), 0, atol=1e-6):
        raise bad_value(
            "sample", f"<ase.Atoms with cell {cell.round(4).tolist()}>", "an orthorhombic cell (a diagonal cell matrix)"
        )
    lengths = np.diag(cell)
    if np.any(lengths <= 0):
        raise bad_value(
            "sample",
            f"<ase.Atoms with cell lengths {lengths.tolist()}>",
            "positive cell lengths (set a cell, and vacuum along z, before simulating)",
        )
    positions = np.mod(np.asarray(atoms.get_positions(), dtype=float), lengths)
    return AtomicSample(
        np.asarray(atoms.get_atomic_numbers()), positions, tuple(lengths), name=str(atoms.get_chemical_formula())
    )


def as_sample(sample: Any) -> AtomicSample | PhaseObject:
    """Accept an :class:`AtomicSample`, a :class:`PhaseObject` or an ``ase.Atoms``."""
    if isinstance(sample, (AtomicSample, PhaseObject)):
        return sample
    if type(sample).__module__.startswith("ase") and hasattr(sample, "get_atomic_numbers"):
        return from_ase(sample)
    raise bad_type("sample", sample, "an AtomicSample, a PhaseObject (stemdask.simulate.samples) or an ase.Atoms")


def _hexagonal_rectangle(a: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Sites of a hexagonal lattice (a) in its orthogonal a × √3a cell: A and B sublattices."""
    h = math.sqrt(3) * a
    site_a = np.array([[0.0, 0.0], [a / 2, h / 2]])
    site_b = np.array([[a / 2, h / 6], [0.0, 2 * h / 3]])
    return site_a, site_b, (a, h)


def _check_cells(cells: Any) -> tuple[int, int]:
    if isinstance(cells, (int, np.integer)) and not isinstance(cells, bool):
        cells = (cells, cells)
    try:
        ny, nx = (int(c) for c in cells)
    except (TypeError, ValueError):
        raise bad_value("cells", cells, "a positive integer or a (ny, nx) pair of repeats") from None
    if ny < 1 or nx < 1 or (ny, nx) != tuple(cells):
        raise bad_value("cells", cells, "a positive integer or a (ny, nx) pair of repeats")
    return ny, nx


def mos2(
    cells: int | tuple[int, int] = (4, 6),
    *,
    vacancy: str | int | None = None,
    a_A: float = 3.16,
    thickness_A: float = 3.17,
    vacuum_A: float = 2.0,
) -> AtomicSample:
    """A 2H-MoS2 monolayer in an orthogonal cell (a along x, √3a along y).

    Parameters
    ----------
    cells : int or (int, int)
        Repeats of the 2-formula-unit orthogonal cell along (y, x); the
        default (4, 6) is 21.9 × 19.0 Å.
    vacancy : {"S", "Mo"}, int or None
        Remove one atom: the S (of the top layer) or Mo atom nearest the cell
        centre, or the atom of this index. Its position is kept in ``info``.
    a_A : float
        Lattice constant (3.16 Å, experimental).
    thickness_A : float
        S-S distance along the beam (3.17 Å).
    vacuum_A : float
        Space above and below the layer along z.
    """
    ny, nx = _check_cells(cells)
    site_a, site_b, (cx, cy) = _hexagonal_rectangle(a_A)
    zc = vacuum_A + thickness_A / 2
    pos = [
        np.c_[site_a, np.full(2, zc)],
        np.c_[site_b, np.full(2, zc - thickness_A / 2)],
        np.c_[site_b, np.full(2, zc + thickness_A / 2)],
    ]
    numbers = [42, 42, 16, 16, 16, 16]
    cell = AtomicSample(numbers, np.concatenate(pos), (cx, cy, 2 * vacuum_A + thickness_A), "MoS2")
    sample = cell.repeat(nx, ny, 1)
    if vacancy is None:
        return sample
    return _remove_atom(sample, vacancy, top_z=zc + thickness_A / 2)


def _remove_atom(sample: AtomicSample, vacancy: str | int, top_z: float) -> AtomicSample:
    n = len(sample.numbers)
    if isinstance(vacancy, (int, np.integer)) and not isinstance(vacancy, bool):
        if not 0 <= vacancy < n:
            raise bad_value("vacancy", vacancy, f"an atom index in 0..{n - 1}")
        index = int(vacancy)
    elif vacancy in ("S", "Mo"):
        z = atomic_number(vacancy)
        centre = np.array(sample.cell_A[:2]) / 2
        dist = np.linalg.norm(sample.positions_A[:, :2] - centre, axis=1)
        candidates = sample.numbers == z
        if vacancy == "S":
            candidates &= np.isclose(sample.positions_A[:, 2], top_z)
        dist = np.where(candidates, dist, np.inf)
        index = int(np.argmin(dist))
    else:
        raise bad_value("vacancy", vacancy, "'S', 'Mo', an atom index or None")
    keep = np.arange(n) != index
    info = dict(
        sample.info,
        vacancy_index=index,
        vacancy_element=int(sample.numbers[index]),
        vacancy_position_A=sample.positions_A[index].tolist(),
    )
    return AtomicSample(
        sample.numbers[keep], sample.positions_A[keep], sample.cell_A, sample.name + " with vacancy", info
    )


def graphene(cells: int | tuple[int, int] = (4, 6), *, a_A: float = 2.46, vacuum_A: float = 2.0) -> AtomicSample:
    """Monolayer graphene in an orthogonal cell (a along x, √3a along y), a = 2.46 Å."""
    ny, nx = _check_cells(cells)
    site_a, site_b, (cx, cy) = _hexagonal_rectangle(a_A)
    xy = np.concatenate([site_a, site_b])
    cell = AtomicSample([6] * 4, np.c_[xy, np.full(4, vacuum_A)], (cx, cy, 2 * vacuum_A), "graphene")
    return cell.repeat(nx, ny, 1)


def silicon_110(
    cells: int | tuple[int, int] = (3, 4), thickness_cells: int = 20, *, a_A: float = 5.431
) -> AtomicSample:
    """Diamond-cubic Si viewed along [110] (beam along z), a thick specimen for multislice.

    The orthorhombic cell has x along [001] (a), y along [1-10] (a/√2) and z
    along [110] (a/√2 = 3.84 Å per repeat): 4 atoms per cell. The atomic
    columns form the familiar dumbbells (1.36 Å apart along x).

    Parameters
    ----------
    cells : int or (int, int)
        Repeats along (y, x).
    thickness_cells : int
        Repeats along the beam (20 → 76.8 Å).
    """
    ny, nx = _check_cells(cells)
    thickness_cells = integer("thickness_cells", thickness_cells)
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    basis = np.concatenate([basis, basis + 0.25]) * a_A  # the 8 atoms of the cubic cell
    ex = np.array([0.0, 0.0, 1.0])
    ey = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)
    ez = np.array([1.0, 1.0, 0.0]) / math.sqrt(2)
    lengths = np.array([a_A, a_A / math.sqrt(2), a_A / math.sqrt(2)])
    shifts = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3) * a_A
    cart = (basis[None] + shifts[:, None]).reshape(-1, 3)
    rotated = np.c_[cart @ ex, cart @ ey, cart @ ez]
    frac = np.mod(np.round(rotated / lengths, 9), 1.0)
    unique = np.unique(np.round(frac, 6), axis=0)
    assert len(unique) == 4, unique
    cell = AtomicSample([14] * 4, unique * lengths, tuple(lengths), "Si [110]")
    return cell.repeat(nx, ny, int(thickness_cells))


def srtio3_001(cells: int | tuple[int, int] = (5, 5), thickness_cells: int = 10, *, a_A: float = 3.905) -> AtomicSample:
    """Cubic perovskite SrTiO3 viewed along [001], a = 3.905 Å (Sr, Ti-O and pure O columns)."""
    ny, nx = _check_cells(cells)
    thickness_cells = integer("thickness_cells", thickness_cells)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cell = AtomicSample([38, 22, 8, 8, 8], frac * a_A, (a_A, a_A, a_A), "SrTiO3 [001]")
    return cell.repeat(nx, ny, int(thickness_cells))


def weak_phase_object(
    shape: tuple[int, int] = (256, 256), *, sampling_A: float = 0.1, phase_std_rad: float = 0.05, seed: int = 0
) -> PhaseObject:
    """A weak phase object: Gaussian white-noise phase of standard deviation ``phase_std_rad``.

    The noise is white on the object grid; the simulator's 2/3 band limit
    then keeps frequencies up to ``1 / (3 sampling_A)``.
    """
    if not (math.isfinite(phase_std_rad) and phase_std_rad > 0):
        raise bad_value("phase_std_rad", phase_std_rad, "a positive phase in rad")
    ny, nx = _check_cells(shape)
    rng = np.random.default_rng(seed)
    phase = rng.normal(0.0, phase_std_rad, (1, ny, nx))
    return PhaseObject(
        phase,
        (sampling_A, sampling_A),
        name="weak white-noise phase object",
        info={"phase_std_rad": phase_std_rad, "seed": seed},
    )
