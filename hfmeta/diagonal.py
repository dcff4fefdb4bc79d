"""Diagonal curvature estimators at a :class:`~hfmeta.model.Linearization`.

All return a flat vector like w.  With J_i = ∂z_i/∂w for example i and the
per-example loss Hessian H_i = S_i S_iᵀ (``loss.hessian_sqrt``, c columns),
the Gauss-Newton diagonal is

    diag G = Σ_i Σ_k (J_iᵀ S_i[:, k])²

* :func:`exact_diag_ggn` -- back-propagate each of the c columns of S for the
  whole batch and let every layer add its squared *per-example* parameter
  gradients (``sq_grad``; Martens, Sutskever & Swersky 2012; Dangel et al.
  2020, BackPACK's DiagGGN).  c backward passes.  Layers that couple examples
  (batch norm in train mode) raise ``NotImplementedError``; then the full
  backward is run once per (example, column): n·c passes, still exact.
* :func:`mc_diag_ggn` -- Monte-Carlo: S replaced by M sampled columns
  ∇_z l(z, ỹ_m) · √(n/M) with ỹ_m drawn from the model's predictive
  distribution (``loss.sample_labels``): (p − onehot(ỹ_m)) / √(nM) with
  ỹ_m ~ Cat(p) for cross-entropy, −ε_m / √(nM) with ε_m ~ N(0, I) for squared
  error; unbiased, M backward passes, error ∝ 1/√M.
* :func:`hutchinson_diag` -- diag(A) ≈ (1/M) Σ_m v_m ⊙ A v_m with Rademacher
  v_m (Bekas, Kokiopoulou & Saad 2007); unbiased, M products, error ∝ 1/√M;
  works for G or the exact Hessian H.
* :func:`becker_lecun_diag` -- one backward pass of approximate second
  derivatives (Becker & LeCun 1988): the exact loss diagonal diag(H_i) at the
  output (diag(p − p²)/n for cross-entropy), squared weights going backward,
  cross terms dropped.  Exact for a single linear layer; biased otherwise.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .curvature import gvp, hvp


def sum_sq_grads(lin, columns):
    """``Σ_cols Σ_i (J_iᵀ col_i)²`` for output cotangents ``columns`` (each (n, c)).

    Uses per-example squares (``lin.sq_grad``, one backward per column) and
    falls back to one backward per (example, column) when a layer couples the
    examples of a batch.
    """
    xp = backend.get_array_module(lin.output)
    out = xp.zeros(lin.model.layout.size, dtype=lin.w.dtype)
    try:
        for col in columns:
            lin.sq_grad(xp.ascontiguousarray(col), out)
        return out
    except NotImplementedError:
        return _sum_sq_grads_per_example(lin, columns)


def _sum_sq_grads_per_example(lin, columns):
    """Fallback: the gradient of ``⟨col_i, z_i⟩`` for each example i on its own, squared."""
    xp = backend.get_array_module(lin.output)
    out = xp.zeros(lin.model.layout.size, dtype=lin.w.dtype)
    g = xp.empty_like(out)
    for col in columns:
        one = xp.zeros_like(lin.output)
        for i in range(one.shape[0]):
            one[i] = col[i]
            lin.backward(one, g)
            out += g * g
            one[i] = 0
    return out


def exact_diag_ggn(lin, loss, y=None):
    """Exact diagonal of the Gauss-Newton matrix (c backward passes; n·c with train-mode BN)."""
    S = loss.hessian_sqrt(lin.output, y)                  # (n, c, c): H_i = S_i S_iᵀ
    return sum_sq_grads(lin, [S[:, :, k] for k in range(S.shape[2])])


def mc_diag_ggn(lin, loss, samples=1, rng=None):
    """Monte-Carlo GGN (Fisher) diagonal from ``samples`` label draws per example.

    Column m is ``∇_z l(z, ỹ_m) · √(n / M)`` = (p − onehot(ỹ_m)) / √(nM) for
    cross-entropy, −ε_m / √(nM) for squared error; the sum of their M outer
    products has expectation H_l (each one H_l / M).  ``rng`` is a
    ``numpy.random.Generator`` (host side, so CPU and GPU draw the same labels).
    """
    rng = np.random.default_rng() if rng is None else rng
    z = lin.output
    scale = (z.shape[0] / samples) ** 0.5
    columns = [loss.grad(z, loss.sample_labels(z, rng)) * scale for _ in range(samples)]
    return sum_sq_grads(lin, columns)


def rademacher(rng, size, like):
    """A ±1 vector drawn on the host from ``rng`` and moved to ``like``'s device and dtype."""
    xp = backend.get_array_module(like)
    return xp.asarray(rng.integers(0, 2, size) * 2 - 1, dtype=like.dtype)


def hutchinson_diag(lin, loss, samples=1, rng=None, y=None, exact=False):
    """Hutchinson's estimate ``(1/M) Σ_m v_m ⊙ A v_m`` of diag(G) (or diag(H) if ``exact``).

    ``samples`` Rademacher probes, one curvature product each (``y`` is needed
    only for the exact Hessian).
    """
    if exact and y is None:
        raise ValueError("hutchinson_diag(exact=True) needs the labels y: the exact "
                         "Hessian depends on them")
    rng = np.random.default_rng() if rng is None else rng
    out = lin.w * 0
    for _ in range(samples):
        v = rademacher(rng, out.size, out)
        out += v * (hvp(lin, loss, y, v) if exact else gvp(lin, loss, v))
    out /= samples
    return out


def becker_lecun_diag(lin, loss, y=None):
    """Becker-LeCun diagonal: one ``backward_diag`` pass from the exact loss diagonal.

    The output seed is diag(H_i) = Σ_k S_i[:, k]² (cross-entropy: (p − p²)/n;
    squared error: 1/n).
    """
    S = loss.hessian_sqrt(lin.output, y)
    return lin.backward_diag((S * S).sum(axis=2))
