"""Hessian-free optimisation as the MLHF paper ran it: HF(Fixed) and HF(LM).

Each step (Martens 2010, with the MLHF supplement's Table 1 settings)::

    g  = ∇l(w)                          on the mini-batch
    A  = G + λ I                        G: Gauss-Newton matrix (optionally of a
                                        smaller curvature mini-batch)
    d  = PCG(A, g, x0, P = I, n = 20, ε = 1e-5)         (hfmeta.pcg.pcg)
    w ← w − lr · d

``x0 = momentum · d_prev``: Table 1 lists "momentum 0" for both HF baselines,
which we read as this warm-start coefficient (Martens 2010 uses 0.95, see
:mod:`hfmeta.optim.martens_hf`), so by default CG starts from zero.

HF(Fixed) keeps λ.  HF(LM) moves it by the Levenberg–Marquardt rule on the
reduction ratio (Moré 1978; Martens 2010, section 4.1)::

    q = −lr ⟨g, d⟩ + lr²/2 ⟨d, A d⟩      (A d = g − r from PCG: no extra product;
                                         q = 0 gives ρ = 1/2)
    ρ = (l(w − lr d) − l(w)) / q         (same mini-batch, one extra forward)
    ρ < 1/4 → λ ← λ / decay,   ρ > 3/4 → λ ← λ · decay,   λ clipped to [1e-3, 1]

The step is always taken, whatever ρ (as in the MLHF baselines); only λ
reacts.  State: ``d`` (the previous solution), ``damping`` (λ), ``t``.
"""
from __future__ import annotations

from .. import backend
from ..checks import COUNT, NONNEGATIVE, POSITIVE, Range, optional
from ..pcg import pcg
from .base import Optimizer


def levenberg_marquardt(damping, rho, decay, low=0.0, high=float("inf")):
    """The LM damping rule: ``ρ < 1/4`` → ``λ / decay``; ``ρ > 3/4`` → ``λ · decay``; clip."""
    if rho < 0.25:
        damping = damping / decay
    elif rho > 0.75:
        damping = damping * decay
    return min(max(damping, low), high)


def curvature_linearization(problem, w, batch, lin, size):
    """The linearization for Gauss-Newton products: ``lin`` itself (``size`` None
    or at least the batch size), or one of the first ``size`` examples of the
    batch (a smaller curvature mini-batch, Martens 2010 section 4.3).  The
    sub-batch's is sliced from ``lin``'s caches
    (:meth:`hfmeta.model.Linearization.first`, no second forward pass) unless a
    layer couples the examples (batch norm in train mode): then a forward runs
    on the sub-batch."""
    if size is None or size >= batch[0].shape[0]:
        return lin
    try:
        return lin.first(size)
    except NotImplementedError:
        x, y = batch
        return problem.linearize(w, (x[:size], y[:size]))


class HF(Optimizer):
    """HF(Fixed): ``d = PCG(G + λI, g, momentum·d_prev, I, n, ε);  w ← w − lr·d``.

    ``curvature_batch`` (int or None): the GGN uses the first that many
    examples of the batch; None, or a size not below the batch's, uses the
    whole batch (:func:`curvature_linearization`).
    """

    name = "hf-fixed"
    # defaults: a stable point of the Table 1 grid on cnn-small/mnist5k (lr 1 with
    # damping 0.1 diverges there within 15 steps)
    defaults = {"lr": 0.1, "damping": 1.0, "cg_iters": 20, "cg_eps": 1e-5,
                "momentum": 0.0, "curvature_batch": None}
    ranges = {"lr": POSITIVE, "damping": NONNEGATIVE, "cg_iters": COUNT, "cg_eps": NONNEGATIVE,
              "momentum": Range(0, 1), "curvature_batch": optional(COUNT)}

    def init(self, w):
        return {"t": 0, "d": w * 0, "damping": float(self.damping)}

    def solve(self, problem, w, state, batch):
        """The CG part shared by both variants: ``(f, g, d, r, ncg)``."""
        f, g, lin = self.gradient(problem, w, batch)
        lin_c = curvature_linearization(problem, w, batch, lin, self.curvature_batch)
        lam = state["damping"]

        def apply_A(v):
            return problem.gvp(lin_c, v, lam)

        x0 = self.momentum * state["d"] if self.momentum else None   # None: zero, one product saved
        res = pcg(apply_A, g, x0, P=None, n=self.cg_iters, eps=self.cg_eps, record=False)
        return f, g, res.x, res.r, res.iterations

    def step(self, problem, w, state, batch):
        f, g, d, r, ncg = self.solve(problem, w, state, batch)
        delta = self.lr * d
        state["d"] = d
        state["t"] += 1
        info = {"loss": float(f), "step_norm": self.norm(delta), "damping": state["damping"],
                "cg_iters": float(ncg), "cg_residual": self.norm(r)}
        return w - delta, state, info


class HFLM(HF):
    """HF(LM): HF with Levenberg–Marquardt damping (``decay`` per step, λ in [damping_min, damping_max])."""

    name = "hf-lm"
    # decay 0.99 (a Table 1 value): with 2/3 λ reaches its floor 1e-3 quickly and
    # cnn-small/mnist5k diverges at step 83
    defaults = {**HF.defaults, "damping": 1.0, "decay": 0.99,
                "damping_min": 1e-3, "damping_max": 1.0}
    ranges = {**HF.ranges, "decay": Range(0, 1, low_open=True), "damping_min": NONNEGATIVE,
              "damping_max": POSITIVE}

    def step(self, problem, w, state, batch):
        xp = backend.get_array_module(w)
        f, g, d, r, ncg = self.solve(problem, w, state, batch)
        lr = self.lr
        w_new = w - lr * d
        q = float(-lr * xp.dot(g, d) + 0.5 * lr * lr * xp.dot(d, g - r))
        f_new = float(problem.loss(w_new, batch))
        rho = (f_new - float(f)) / q if q != 0 else 0.5
        used = state["damping"]
        state["damping"] = levenberg_marquardt(used, rho, self.decay,
                                               self.damping_min, self.damping_max)
        state["d"] = d
        state["t"] += 1
        info = {"loss": float(f), "step_norm": lr * self.norm(d), "damping": used,
                "rho": rho, "cg_iters": float(ncg), "cg_residual": self.norm(r)}
        return w_new, state, info
