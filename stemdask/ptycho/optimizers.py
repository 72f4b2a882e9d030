"""Update rules applied on the driver to the reduced gradients: fixed-step gradient descent and Adam.

Gradients arrive as Wirtinger derivatives ``∂L/∂z*`` for complex parameters
(the object transmission, probe modes) and as ordinary derivatives for real
ones (phase, aberrations, offsets). Gradient descent is the Wirtinger flow
``z ← z - μ ∂L/∂z*`` (Leidl et al. Eq. 6); Adam (Kingma & Ba 2014) treats
the real and imaginary parts of a complex parameter as two real ones.

The state is plain numpy arrays and numbers, so a checkpoint holds it
exactly and a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import bad_value

#: optimiser names
OPTIMIZERS: tuple[str, ...] = ("gd", "adam")


def _real_view(a: np.ndarray) -> np.ndarray:
    """A float view of a real or complex array (real and imaginary parts as pairs)."""
    a = np.ascontiguousarray(a)
    return a.view(np.float64) if a.dtype == np.complex128 else a


class Optimizer:
    """Gradient descent or Adam over named parameters (numpy arrays), with its state.

    Parameters
    ----------
    kind : {"gd", "adam"}
    betas : (float, float)
        Adam's moment decays.
    eps : float
        Adam's denominator floor.
    """

    def __init__(self, kind: str, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in OPTIMIZERS:
            raise bad_value("optimizer", kind, f"one of {', '.join(map(repr, OPTIMIZERS))}")
        self.kind = kind
        self.betas = betas
        self.eps = eps
        self.state: dict[str, dict[str, Any]] = {}

    def update(self, name: str, param: np.ndarray, grad: np.ndarray, step: float) -> np.ndarray:
        """The parameter after one update with step (learning rate) ``step``."""
        param = np.asarray(param)
        grad = np.asarray(grad).astype(param.dtype, copy=False)
        if self.kind == "gd":
            return param - step * grad
        b1, b2 = self.betas
        g = _real_view(grad)
        st = self.state.get(name)
        if st is None:
            st = {"m": np.zeros_like(g), "v": np.zeros_like(g), "t": 0}
            self.state[name] = st
        st["t"] += 1
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        m_hat = st["m"] / (1 - b1 ** st["t"])
        v_hat = st["v"] / (1 - b2 ** st["t"])
        delta = m_hat / (np.sqrt(v_hat) + self.eps)
        out = _real_view(param.copy()) - step * delta
        return out.view(param.dtype).reshape(param.shape) if param.dtype == np.complex128 else out

    def arrays(self) -> dict[str, np.ndarray]:
        """The state as flat named arrays (for a checkpoint)."""
        out = {}
        for name, st in self.state.items():
            out[f"{name}.m"] = st["m"]
            out[f"{name}.v"] = st["v"]
            out[f"{name}.t"] = np.asarray([st["t"]])
        return out

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore the state written by :meth:`arrays`."""
        names = {k.rsplit(".", 1)[0] for k in arrays}
        self.state = {
            n: {"m": arrays[f"{n}.m"], "v": arrays[f"{n}.v"], "t": int(np.asarray(arrays[f"{n}.t"]).reshape(-1)[0])}
            for n in names
        }
