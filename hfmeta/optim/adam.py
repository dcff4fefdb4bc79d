"""Adam (Kingma & Ba 2015, Algorithm 1)::

    t ← t + 1
    m ← β₁ m + (1 − β₁) g
    v ← β₂ v + (1 − β₂) g²
    m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)
    w ← w − lr · m̂ / (sqrt(v̂) + ε)

Bias correction and ε exactly as the paper's Algorithm 1: ε is added
*outside* the square root of the bias-corrected ``v̂`` (ε = 1e-8).
State: ``m``, ``v`` (like w), ``t``.
"""
from __future__ import annotations

from .. import backend
from ..checks import FRACTION, POSITIVE
from .base import Optimizer


class Adam(Optimizer):
    """Adam: ``w ← w − lr · m̂ / (sqrt(v̂) + ε)`` with bias-corrected moments."""

    name = "adam"
    defaults = {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    ranges = {"lr": POSITIVE, "beta1": FRACTION, "beta2": FRACTION, "eps": POSITIVE}

    def init(self, w):
        return {"t": 0, "m": w * 0, "v": w * 0}

    def step(self, problem, w, state, batch):
        xp = backend.get_array_module(w)
        f, g, _ = self.gradient(problem, w, batch)
        b1, b2 = self.beta1, self.beta2
        t = state["t"] + 1
        m, v = state["m"], state["v"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        delta = self.lr * m_hat / (xp.sqrt(v_hat) + self.eps)
        state["t"] = t
        return w - delta, state, {"loss": float(f), "step_norm": self.norm(delta)}
