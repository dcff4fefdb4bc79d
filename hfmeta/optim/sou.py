"""SOU: the diagonal second-order update the SLSTM paper compares against.

Roy & Todorovic (ICPR 2018, slides), after Becker & LeCun (1988)::

    θ ← θ − α · g / (|h| + μ)

with h the diagonal second derivatives of the mini-batch loss and μ > 0 a
small damping (μ = 0 is refused: Becker–LeCun gives exact zeros, where the
step would be 0/0).  We use the **absolute value** |h|, as Becker & LeCun
(1988) do, so a negative estimate never flips the step: both Hutchinson
estimators (of the GGN and of the Hessian) can be negative; the exact and
sampled GGN diagonals and Becker–LeCun are ≥ 0, where |h| = h.

``diagonal`` picks the estimator of :mod:`hfmeta.diagonal` by name:

* ``"becker-lecun"`` (default, the SLSTM slides' "second-order back-propagation":
  one extra backward pass)
* ``"exact-ggn"`` (c backward passes), ``"mc-ggn"`` (``samples`` sampled-label
  passes), ``"hutchinson"`` (``samples`` GGN products),
  ``"hutchinson-hessian"`` (``samples`` exact Hessian products)

Random estimators draw from ``numpy.random.default_rng([seed, t])``.
State: ``t``.
"""
from __future__ import annotations

import numpy as np

from .. import diagonal
from ..checks import COUNT, NATURAL, POSITIVE, Choice
from .base import Optimizer

DIAGONALS = {
    "becker-lecun": lambda lin, loss, y, samples, rng: diagonal.becker_lecun_diag(lin, loss, y),
    "exact-ggn": lambda lin, loss, y, samples, rng: diagonal.exact_diag_ggn(lin, loss, y),
    "mc-ggn": lambda lin, loss, y, samples, rng: diagonal.mc_diag_ggn(lin, loss, samples, rng),
    "hutchinson": lambda lin, loss, y, samples, rng: diagonal.hutchinson_diag(
        lin, loss, samples, rng, y),
    "hutchinson-hessian": lambda lin, loss, y, samples, rng: diagonal.hutchinson_diag(
        lin, loss, samples, rng, y, exact=True),
}


class SOU(Optimizer):
    """Diagonal Newton step ``θ ← θ − α g / (|h| + μ)`` (Becker & LeCun 1988)."""

    name = "sou"
    # lr 0.01, μ 1: with lr 0.1, μ 1e-3 the step g/(|h| + μ) diverges within 10 steps
    defaults = {"lr": 0.01, "mu": 1.0, "diagonal": "becker-lecun", "samples": 1, "seed": 0}
    ranges = {"lr": POSITIVE, "mu": POSITIVE, "diagonal": Choice(tuple(DIAGONALS)),
              "samples": COUNT, "seed": NATURAL}

    def step(self, problem, w, state, batch):
        f, g, lin = self.gradient(problem, w, batch)
        rng = np.random.default_rng([int(self.seed), int(state["t"])])
        h = DIAGONALS[self.diagonal](lin, problem.loss_fn, batch[1], int(self.samples), rng)
        h = abs(h)
        delta = self.lr * g / (h + self.mu)
        state["t"] += 1
        info = {"loss": float(f), "step_norm": self.norm(delta), "h_mean": float(h.mean())}
        return w - delta, state, info
