"""Open a real detector file, calibrate it, and store it as zarr v3.

Run:  python examples/convert_real_file.py ../shared/data/merlin/001_4x2_6bit.mib out.zarr

The Merlin file carries no angular calibration, so we supply it (values for
illustration); every reader accepts the same calibration keywords.
"""

from __future__ import annotations

import sys

import stemdask


def main(src: str, dst: str) -> None:
    data = stemdask.open_dataset(src, energy_ev=300e3, semiangle_mrad=1.5, detector_pixel_mrad=0.05, scan_step_A=50.0)
    print(data.stem.describe())
    stemdask.save(data, dst, codec="zstd", overwrite=True, progress=True)
    back = stemdask.open_dataset(dst)
    assert (back.values == data.values).all()
    print(f"wrote {dst}: {stemdask.io.store_nbytes(dst)} bytes for {data.nbytes} bytes of frames")


if __name__ == "__main__":
    main(*sys.argv[1:3])
