"""Interactive SSB refocusing: sliders for defocus, C12 and its angle, here or on a cluster.

``SSB(data)`` keeps G on the workers; every slider move runs only the
reduction (``ssb.reconstruct``), a few tens of ms for a 64 × 64 scan.

In Jupyter (needs ``ipywidgets`` and matplotlib's widget backend)::

    from ssb_interactive import simulated, SSB, refocus_widget
    data = simulated()                       # or stemdask.open_dataset(...)
    refocus_widget(SSB(data))                # sliders: defocus, C12, phi12

From a Python session connected to a running scheduler (G stays on its
workers; only the 64 × 64 image comes back)::

    client = stemdask.cluster.connect("tcp://host:8786")
    ssb = SSB(data)                          # persisted on the cluster
    ssb.reconstruct(defocus_A=50.0)

Run as a script it does both without a notebook: it drives the slider
callback as a user would and prints the update times, then repeats the
refocus through a client connected to a LocalCluster's scheduler.

Run:  python examples/ssb_interactive.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

import stemdask
from stemdask.ptycho import SSB
from stemdask.simulate import samples, simulate_4dstem

SCAN = 64
DEFOCUS_A = 80.0


def simulated(defocus_A: float = DEFOCUS_A) -> Any:
    """A 64 × 64 scan of a weak phase object, simulated with ``defocus_A`` (Å)."""
    data, _ = simulate_4dstem(
        samples.weak_phase_object((128, 128), sampling_A=0.2, phase_std_rad=0.05),
        energy_ev=80e3,
        semiangle_mrad=25.0,
        aberrations={"defocus": defocus_A},
        scan_shape=(SCAN, SCAN),
        scan_step_A=0.4,
        scan_origin_A=(0.0, 0.0),
        detector_shape=32,
        max_angle_mrad=32.0,
    )
    return data.persist()


def refocus_widget(ssb: SSB, *, defocus_range_A: float = 200.0) -> Any:
    """An ipywidgets box: sliders (defocus, C12, phi12) and the SSB phase, updated on every move.

    Returns the box; its ``update`` attribute is the callback (called with the
    slider values), and ``times_s`` lists the time of each update.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    sliders = {
        "defocus": widgets.FloatSlider(value=0.0, min=-defocus_range_A, max=defocus_range_A, step=1.0),
        "C12": widgets.FloatSlider(value=0.0, min=0.0, max=100.0, step=1.0),
        "phi12": widgets.FloatSlider(value=0.0, min=-np.pi / 2, max=np.pi / 2, step=0.01),
    }
    label = widgets.Label()
    output = widgets.Output()
    with output:
        fig, ax = plt.subplots(figsize=(4, 4))
        image = ax.imshow(ssb.reconstruct()["phase"].values, cmap="gray")
        ax.set_axis_off()
    times: list[float] = []

    def update(**values: float) -> None:
        t0 = time.perf_counter()
        phase = ssb.reconstruct(aberrations=values)["phase"].values
        image.set_data(phase)
        image.set_clim(float(phase.min()), float(phase.max()))
        times.append(time.perf_counter() - t0)
        label.value = f"reconstruction {1e3 * times[-1]:.0f} ms"
        fig.canvas.draw_idle()

    def on_change(_: Any) -> None:
        update(**{name: s.value for name, s in sliders.items()})

    for s in sliders.values():
        s.observe(on_change, names="value")
    box = widgets.VBox([*(widgets.HBox([widgets.Label(n), s]) for n, s in sliders.items()), label, output])
    box.update, box.times_s, box.sliders = update, times, sliders  # type: ignore[attr-defined]
    return box


def _drive(box: Any, steps: int = 20) -> list[float]:
    """Move the defocus slider as a user would (each move triggers an update)."""
    for value in np.linspace(0.0, DEFOCUS_A, steps):
        box.sliders["defocus"].value = float(value)
    return list(box.times_s)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    data = simulated()
    ssb = SSB(data)
    box = refocus_widget(ssb)
    times = _drive(box)
    print(f"slider updates on the local scheduler: median {1e3 * statistics.median(times):.1f} ms over {len(times)}")
    fit = ssb.fit_aberrations()
    print(f"fitted defocus {fit['defocus']:.1f} Å (simulated {DEFOCUS_A} Å), C12 {fit['C12']:.1f} Å")

    # the same refocus from a session connected to a scheduler: G lives on the workers
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        with stemdask.cluster.connect(cluster.scheduler_address, quiet=True) as client:
            remote = SSB(data.compute())
            times = []
            for value in np.linspace(0.0, DEFOCUS_A, 10):
                t0 = time.perf_counter()
                phase = remote.reconstruct(defocus_A=float(value))["phase"]
                times.append(time.perf_counter() - t0)
            print(
                f"refocus through the scheduler ({len(client.scheduler_info()['workers'])} workers): "
                f"median {1e3 * statistics.median(times):.1f} ms; image {phase.shape}"
            )


if __name__ == "__main__":
    main()
