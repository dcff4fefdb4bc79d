"""Martens' (2010) full Hessian-free recipe, the strong second-order baseline.

J. Martens, "Deep learning via Hessian-free optimization", ICML 2010.  Each step:

1. ``g = ∇l(w)`` on the mini-batch; ``A = G + λI`` with G the Gauss-Newton
   matrix of the (optionally smaller) curvature mini-batch (section 4.3).
2. CG on ``A x = g`` (we solve for the step x and move to ``w − x``; Martens'
   ``p`` is ``−x``) from the warm start ``x0 = 0.95 · x_prev`` (the last CG
   iterate of the previous step, section 4.5), tracking the quadratic model

       φ_i = ½ x_iᵀ A x_i − gᵀ x_i = −½ x_iᵀ (g + r_i)      (free: r_i = g − A x_i)

   and stopping by relative progress (section 4.4, :func:`should_stop`):
   ``i > k``, ``φ_i < 0`` and ``(φ_i − φ_{i−k}) / φ_i < k·ε`` with
   ``k = max(10, ⌈0.1 i⌉)``, ε = 5e-4 (at most 250 iterations).
3. CG-backtracking (section 4.6): iterates saved at ``i = ⌈5·1.3^j⌉`` and the
   last; walk back from the last while the earlier one has a lower loss.
4. Levenberg–Marquardt on the chosen x (section 4.1):
   ``ρ = (l(w − x) − l(w)) / φ(x)``; ``ρ < 1/4`` → λ ×3/2, ``ρ > 3/4`` → λ ×2/3.
   (φ is the damped model, whose value CG already has.)
5. Armijo back-tracking line search along x (Martens' released code):
   α = 1, 0.8, 0.8², ... (at most 60 tries) until
   ``l(w − αx) ≤ l(w) − c α ⟨g, x⟩`` with c = 1e-2; no α found → no step.

Martens' diagonal preconditioner ``(diag Σ_n g_n² + λ)^0.75`` is not used
(P = I, as in the MLHF baselines).  All losses are on the gradient batch.
State: ``x`` (last CG iterate), ``damping``, ``t``.
"""
from __future__ import annotations

import math

from .. import backend
from ..checks import COUNT, NONNEGATIVE, OPEN_FRACTION, POSITIVE, Range, optional
from .base import Optimizer
from .hf import curvature_linearization, levenberg_marquardt


def should_stop(phi, i, eps=5e-4, min_k=10, frac=0.1) -> bool:
    """Martens' relative-progress rule on ``phi[j] = φ_j`` (j = 0..i):
    ``k = max(min_k, ⌈frac·i⌉)``; stop iff ``i > k``, ``φ_i < 0`` and
    ``(φ_i − φ_{i−k}) / φ_i < k·eps``."""
    k = max(min_k, math.ceil(frac * i))
    return i > k and phi[i] < 0 and (phi[i] - phi[i - k]) / phi[i] < k * eps


def save_points(max_iters) -> set:
    """CG iterations whose iterate is kept for backtracking: ``{⌈5·1.3^j⌉} ≤ max_iters``."""
    points, j = set(), 0
    while math.ceil(5 * 1.3 ** j) <= max_iters:
        points.add(math.ceil(5 * 1.3 ** j))
        j += 1
    return points


def martens_cg(apply_A, b, x0, max_iters=250, eps=5e-4):
    """CG on ``A x = b`` with φ tracking, the relative-progress stop and saved iterates.

    Returns ``(x, saved, phi)``: the last iterate, ``[(i, x_i, φ_i), ...]`` for the
    save points reached plus the last iterate, and the list ``φ_0..φ_N``.
    """
    xp = backend.get_array_module(b)
    x = x0.copy()
    r = b - apply_A(x) if float(xp.dot(x, x)) > 0 else b.copy()
    p = r.copy()
    rr = float(xp.dot(r, r))
    phi = [float(-0.5 * xp.dot(x, b + r))]
    keep = save_points(max_iters)
    saved = []
    i = 0
    for i in range(1, max_iters + 1):
        Ap = apply_A(p)
        pAp = float(xp.dot(p, Ap))
        if pAp <= 0 or rr == 0:  # no curvature left along p (or solved exactly)
            i -= 1
            break
        alpha = rr / pAp
        x += alpha * p
        r -= alpha * Ap
        phi.append(float(-0.5 * xp.dot(x, b + r)))
        if i in keep:
            saved.append((i, x.copy(), phi[i]))
        if should_stop(phi, i, eps):
            break
        rr_new = float(xp.dot(r, r))
        p *= rr_new / rr
        p += r
        rr = rr_new
    if not saved or saved[-1][0] != i:
        saved.append((i, x.copy(), phi[i]))
    return x, saved, phi


def backtrack(saved, loss_at):
    """Martens' CG-backtracking: from the last saved iterate walk back while the
    earlier iterate has a lower loss.  Returns ``(i, x, φ, loss)`` of the choice."""
    i, x, phi = saved[-1]
    f = loss_at(x)
    for j, xj, phij in reversed(saved[:-1]):
        fj = loss_at(xj)
        if fj >= f:
            break
        i, x, phi, f = j, xj, phij, fj
    return i, x, phi, f


class MartensHF(Optimizer):
    """Martens (2010) HF: warm-started CG with relative-progress stop,
    CG-backtracking, LM damping (×3/2, ×2/3) and an Armijo line search.
    ``curvature_batch``: as :class:`hfmeta.optim.hf.HF`'s (Martens' own practice)."""

    name = "martens-hf"
    defaults = {"damping": 1.0, "warm_start": 0.95, "cg_max_iters": 250, "cg_eps": 5e-4,
                "lm_decay": 2 / 3, "armijo_c": 1e-2, "armijo_shrink": 0.8,
                "armijo_tries": 60, "curvature_batch": None}
    ranges = {"damping": POSITIVE, "warm_start": Range(0, 1), "cg_max_iters": COUNT,
              "cg_eps": NONNEGATIVE, "lm_decay": OPEN_FRACTION, "armijo_c": OPEN_FRACTION,
              "armijo_shrink": OPEN_FRACTION, "armijo_tries": COUNT,
              "curvature_batch": optional(COUNT)}

    def init(self, w):
        return {"t": 0, "x": w * 0, "damping": float(self.damping)}

    def step(self, problem, w, state, batch):
        xp = backend.get_array_module(w)
        f, g, lin = self.gradient(problem, w, batch)
        f = float(f)
        lin_c = curvature_linearization(problem, w, batch, lin, self.curvature_batch)
        lam = state["damping"]

        def apply_A(v):
            return problem.gvp(lin_c, v, lam)

        def loss_at(x, alpha=1.0):
            return float(problem.loss(w - alpha * x, batch))

        x_last, saved, phi = martens_cg(apply_A, g, self.warm_start * state["x"],
                                        self.cg_max_iters, self.cg_eps)
        i, x, phi_x, f_x = backtrack(saved, loss_at)
        rho = (f_x - f) / phi_x if phi_x != 0 else 0.5
        state["damping"] = levenberg_marquardt(lam, rho, self.lm_decay)

        slope = float(xp.dot(g, x))            # −(directional derivative) along −x
        alpha, f_new, tries = 1.0, f_x, 1
        while f_new > f - self.armijo_c * alpha * slope:
            if tries == self.armijo_tries:
                alpha, f_new = 0.0, f
                break
            alpha *= self.armijo_shrink
            f_new = loss_at(x, alpha)
            tries += 1

        state["x"] = x_last
        state["t"] += 1
        info = {"loss": f, "step_norm": alpha * self.norm(x), "damping": lam, "rho": rho,
                "cg_iters": float(len(phi) - 1), "cg_chosen": float(i), "alpha": alpha,
                "line_search_tries": float(tries)}
        return w - alpha * x, state, info
