"""RMSprop (Tieleman & Hinton 2012, *Neural Networks for Machine Learning*, lecture 6e)::

    ms ← ρ ms + (1 − ρ) g²
    w  ← w − lr · g / sqrt(ms + ε)

The lecture divides by ``sqrt(ms)`` and gives no ε.  We put ε **inside** the
square root, as TensorFlow 1's ``RMSPropOptimizer`` (the implementation the
MLHF baselines were run with) does, with its default ε = 1e-10.
``ms`` starts at ``ms_init`` = 0 (the lecture's running average from nothing;
TensorFlow 1 starts it at 1 -- pass ``ms_init=1.0`` to reproduce that).
State: ``ms`` (like w), ``t``.
"""
from __future__ import annotations

from .. import backend
from ..checks import FRACTION, NONNEGATIVE, POSITIVE
from .base import Optimizer


class RMSprop(Optimizer):
    """RMSprop: ``ms ← ρ ms + (1−ρ) g²;  w ← w − lr g / sqrt(ms + ε)``."""

    name = "rmsprop"
    defaults = {"lr": 0.001, "decay": 0.9, "eps": 1e-10, "ms_init": 0.0}
    ranges = {"lr": POSITIVE, "decay": FRACTION, "eps": POSITIVE, "ms_init": NONNEGATIVE}

    def init(self, w):
        return {"t": 0, "ms": w * 0 + self.ms_init}

    def step(self, problem, w, state, batch):
        xp = backend.get_array_module(w)
        f, g, _ = self.gradient(problem, w, batch)
        ms = state["ms"]
        ms *= self.decay
        ms += (1 - self.decay) * g * g
        delta = self.lr * g / xp.sqrt(ms + self.eps)
        state["t"] += 1
        return w - delta, state, {"loss": float(f), "step_norm": self.norm(delta)}
