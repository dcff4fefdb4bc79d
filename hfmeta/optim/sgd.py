"""Stochastic gradient descent with heavy-ball momentum (Polyak 1964).

Heavy-ball form, as in Sutskever et al. (2013) and PyTorch's ``SGD``::

    v ← μ v + g
    w ← w − lr · v

(TensorFlow's ``MomentumOptimizer`` uses the same form.)  ``momentum = 0``
is plain SGD.  State: ``v`` (like w), ``t``.
"""
from __future__ import annotations

from ..checks import FRACTION, POSITIVE
from .base import Optimizer


class SGD(Optimizer):
    """SGD(m) of the MLHF comparison: ``v ← μv + g; w ← w − lr·v``."""

    name = "sgd"
    defaults = {"lr": 0.01, "momentum": 0.9}
    ranges = {"lr": POSITIVE, "momentum": FRACTION}

    def init(self, w):
        return {"t": 0, "v": w * 0}

    def step(self, problem, w, state, batch):
        f, g, _ = self.gradient(problem, w, batch)
        v = state["v"]
        v *= self.momentum
        v += g
        delta = self.lr * v
        state["t"] += 1
        return w - delta, state, {"loss": float(f), "step_norm": self.norm(delta)}
