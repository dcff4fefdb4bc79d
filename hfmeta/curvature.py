"""Curvature-vector products at a :class:`~hfmeta.model.Linearization`.

The network maps parameters w to logits z = f(w, x); the loss l(z, y) is a
mean over the batch.  With J = ∂z/∂w and H_l = ∂²l/∂z²:

* **Gauss-Newton product** (Schraudolph 2002; Martens 2010)

      G v = Jᵀ H_l J v        (+ λ v  or  s ⊙ v  with damping)

  one R-op (forward, reusing the forward's caches), one loss-Hessian product,
  one backward.  G is symmetric positive semi-definite.

* **Exact Hessian product** (Pearlmutter 1994): the R-operator of the whole
  backward pass,

      H v = R{∇_w l} = Jᵀ H_l J v + Σ_k (∂l/∂z_k) (∂²z_k/∂w²) v

  computed as: a forward R-pass recording each layer's input direction, a
  backward pass recording each layer's output cotangent, then the R-backward
  in which each layer's ``backward_rop`` adds its own second-order terms
  (Linear and Conv2d are bilinear in input and weights; BatchNorm has genuine
  second derivatives; ReLU and max-pool have none).  At the output the loss
  contributes R{∂l/∂z} = H_l R{z} = H_l J v.

  For a ReLU/max-pool network without batch norm, z is piecewise linear in the
  parameters of any *one* layer, so H and G agree on every per-layer diagonal
  block (in particular on the diagonal) and differ only between layers.

:func:`dense` builds the explicit matrix of any of these operators column by
column, for study on tiny networks.
"""
from __future__ import annotations

from . import backend


def _damped(out, v, damping):
    """``out + damping ⊙ v`` (``damping`` a scalar λ or a vector s), in place."""
    if damping is not None:
        out += damping * v
    return out


def gvp(lin, loss, v, damping=None):
    """Gauss-Newton product ``G v = Jᵀ H_l J v`` (+ ``damping ⊙ v``).

    ``lin``: Linearization at (w, x); ``loss``: a loss with ``hvp(z, y, u)``
    (the cross-entropy and squared-error Hessians do not depend on the
    labels); ``v``: flat direction like w.  Returns a flat vector.
    """
    jv = lin.rop(v)
    return _damped(lin.backward(loss.hvp(lin.output, None, jv)), v, damping)


def hvp(lin, loss, y, v, damping=None):
    """Exact Hessian product ``H v = ∂²l(f(w, x), y)/∂w² · v`` (+ ``damping ⊙ v``).

    Needs the labels ``y`` (the gradient ∂l/∂z weights the network's second
    derivatives).  Cost: one R-op, one backward, one R-backward.
    """
    z = lin.output
    dz = loss.grad(z, y)
    recorded = lin.rop_record(v)            # (input direction of each layer, J v)
    ddz = loss.hvp(z, y, recorded[1])       # R{∂l/∂z} = H_l J v
    return _damped(lin.backward_rop(dz, v, ddz, recorded), v, damping)


def operator(lin, loss, damping=None, y=None, exact=False):
    """``v -> A v`` with ``A = G + damping`` (or ``H + damping`` if ``exact``), for PCG."""
    if exact:
        return lambda v: hvp(lin, loss, y, v, damping)
    return lambda v: gvp(lin, loss, v, damping)


def dense(apply, size, like):
    """The explicit (size, size) matrix of a linear operator, built column by column.

    ``like`` is a flat array giving device and dtype.  Costs ``size`` products:
    for tiny networks only.
    """
    xp = backend.get_array_module(like)
    out = xp.empty((size, size), dtype=like.dtype)
    e = xp.zeros(size, dtype=like.dtype)
    for j in range(size):
        e[j] = 1
        out[:, j] = apply(e)
        e[j] = 0
    return out
