"""Input preprocessing and output post-processing of the coordinate-wise LSTMs.

Every map here is elementwise (one coordinate at a time) and comes with its
derivative, so a meta-gradient could flow through it: every learned optimizer
here (MLHF, L2L, SLSTM) treats the LSTM inputs as constants, as its paper
does, and the input derivatives serve the tests and any mode that would not.

Input preprocessing: a vector ``v`` (n,) becomes k feature columns (n, k) of
the LSTM input ``x``; ``backward(v, d_feat)`` maps their cotangent (n, k)
back to ``v̄`` (n,).

* ``tanh``     x = tanh(v)                                   (MLHF, section 4)
* ``logsign``  x = (log|v| / p, sign v)  if |v| ≥ e^−p
               x = (−1, e^p v)           otherwise           (L2L, Andrychowicz
               et al. 2016, appendix A; p = 10).  Derivative: (1/(p v), 0) on
               the first branch, (0, e^p) on the second.
* ``log``      x = log(max(v, 0) + e^−p) / p                 for non-negative
               inputs such as SLSTM's diagonal second derivatives h.  The
               offset e^−p keeps log finite at v = 0 and puts the output in
               [−1, ∞) like the first ``logsign`` feature; negative inputs
               (a non-convex Hessian diagonal) are clamped to 0 and get a zero
               derivative -- use ``logsign`` when signs matter.

Output post-processing: the raw dense output ``y`` → what the optimizer uses.

* ``softplus`` s = log(1 + e^y), stable as max(y, 0) + log1p(e^−|y|);
               derivative σ(y)                              (MLHF)
* ``scale``    u = c · y with c = 0.1;  derivative c           (L2L)
"""
from __future__ import annotations

import math

from .. import backend


class Tanh:
    """x = tanh(v), one feature (MLHF)."""
    n_features = 1

    def forward(self, v, out):
        xp = backend.get_array_module(v)
        xp.tanh(v, out=out[:, 0])
        return out

    def backward(self, v, d_feat):
        xp = backend.get_array_module(v)
        t = xp.tanh(v)
        return d_feat[:, 0] * (1 - t * t)


class LogSign:
    """L2L's gradient preprocessing, two features: (log|v|/p, sign v) or (−1, e^p v)."""
    n_features = 2

    def __init__(self, p: float = 10.0):
        self.p = float(p)
        self.threshold = math.exp(-self.p)

    def forward(self, v, out):
        xp = backend.get_array_module(v)
        big = xp.abs(v) >= self.threshold
        log_abs = xp.log(xp.maximum(xp.abs(v), self.threshold))
        out[:, 0] = xp.where(big, log_abs / self.p, -1.0)
        out[:, 1] = xp.where(big, xp.sign(v), v / self.threshold)
        return out

    def backward(self, v, d_feat):
        xp = backend.get_array_module(v)
        big = xp.abs(v) >= self.threshold
        v_safe = xp.where(big, v, 1.0)
        return xp.where(big, d_feat[:, 0] / (self.p * v_safe), d_feat[:, 1] / self.threshold)


class Log:
    """x = log(max(v, 0) + e^−p) / p, one feature (non-negative inputs, SLSTM)."""
    n_features = 1

    def __init__(self, p: float = 10.0):
        self.p = float(p)
        self.offset = math.exp(-self.p)

    def forward(self, v, out):
        xp = backend.get_array_module(v)
        col = out[:, 0]
        xp.maximum(v, 0, out=col)
        col += self.offset
        xp.log(col, out=col)
        col /= self.p
        return out

    def backward(self, v, d_feat):
        xp = backend.get_array_module(v)
        positive = v > 0
        return xp.where(positive, d_feat[:, 0] / (self.p * (xp.maximum(v, 0) + self.offset)), 0.0)


class Softplus:
    """s = log(1 + e^y), derivative σ(y) (MLHF's post-processing)."""

    def forward(self, y):
        xp = backend.get_array_module(y)
        out = xp.abs(y)
        xp.negative(out, out=out)
        xp.exp(out, out=out)
        xp.log1p(out, out=out)
        out += xp.maximum(y, 0)
        return out

    def backward(self, y, d_out):
        xp = backend.get_array_module(y)
        sig = xp.tanh(0.5 * y)          # σ(y) = (1 + tanh(y/2)) / 2, no overflow
        sig += 1
        sig *= 0.5
        sig *= d_out
        return sig


class Scale:
    """u = c · y (L2L's output, c = 0.1)."""

    def __init__(self, scale: float = 0.1):
        self.scale = float(scale)

    def forward(self, y):
        return self.scale * y

    def backward(self, y, d_out):
        return self.scale * d_out


PREPROCESS = {"tanh": Tanh, "logsign": LogSign, "log": Log}
POSTPROCESS = {"softplus": Softplus, "scale": Scale}


def build_inputs(preprocs, vectors, out=None):
    """Preprocess each vector into its columns of one LSTM input ``x`` (n, Σk).

    ``preprocs`` and ``vectors`` are parallel sequences, e.g.
    ``([Tanh(), Tanh(), Tanh()], [g, d_prev, r_prev])`` for MLHF.  A new
    ``x`` is Fortran-ordered (feature-major): each feature column is
    contiguous, for the preprocessing that writes it and for the
    feature-major LSTM step that reads ``xᵀ``.
    """
    xp = backend.get_array_module(*vectors)
    n_features = sum(pp.n_features for pp in preprocs)
    if out is None:
        out = xp.empty((vectors[0].shape[0], n_features), dtype=vectors[0].dtype, order="F")
    col = 0
    for pp, v in zip(preprocs, vectors, strict=True):
        pp.forward(v, out[:, col:col + pp.n_features])
        col += pp.n_features
    return out


def inputs_backward(preprocs, vectors, d_x):
    """Cotangents of the vectors given ``d_x`` (n, Σk), the cotangent of :func:`build_inputs`."""
    grads, col = [], 0
    for pp, v in zip(preprocs, vectors, strict=True):
        grads.append(pp.backward(v, d_x[:, col:col + pp.n_features]))
        col += pp.n_features
    return grads
