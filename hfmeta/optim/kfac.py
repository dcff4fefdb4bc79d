"""K-FAC for fully-connected and convolutional layers.

Martens & Grosse (2015), "Optimizing neural networks with Kronecker-factored
approximate curvature"; Grosse & Martens (2016), "A Kronecker-factored
approximate Fisher matrix for convolution layers" (KFC).

For a Linear or Conv2d layer with weight and bias read as one matrix
``W̄ = [W | b]`` (o, K+1) (conv: W as (o, c·kh·kw)), the Fisher block is
approximated by a Kronecker product ``F ≈ A ⊗ G`` of

    A = E_{n,t}[ā āᵀ]              (K+1, K+1)   ā = (input patch, 1)
                                   (K, K), ā = input patch, for a layer without bias
    G = |T| · E_{n,t}[ds dsᵀ]      (o, o)        ds = ∂(−log p(ỹ|x))/∂s

where t runs over the |T| output locations (one for a Linear layer), the
patches are the im2col columns (:mod:`hfmeta.layers.im2col`), and the labels
ỹ are *sampled from the model* (the true Fisher, not the empirical one), one
per example, ``ds`` per example (not divided by the batch size).  The factors
are exponential moving averages with decay ``min(cov_ema_decay, 1 − 1/k)`` at
step k (Martens & Grosse 2015, section 5: no bias towards the zero start).

Every ``inverse_every`` steps the damped inverses are refreshed with the
π-corrected factored Tikhonov damping (Martens & Grosse 2015, section 6.3)::

    π = sqrt((tr A / dim A) / (tr G / dim G)),  γ_A = π √λ,  γ_G = √λ / π
    U = (G + γ_G I)⁻¹ ∇W̄ (A + γ_A I)⁻¹

Parameters of other layers (batch norm γ, β) keep their plain gradient.  With
batch norm in train mode the back-propagated ``ds`` of one example also depend
on the others' (through the batch statistics); K-FAC treats them as
per-example all the same, the usual approximation.  As
TensorFlow's ``KfacOptimizer`` (the MLHF baseline): the preconditioned
gradient u is optionally scaled by ``c = min(1, √(norm_constraint / (lr² ⟨u,
g⟩)))`` (TensorFlow's clip: the scaled step's ``lr² c ⟨u, g⟩`` is then at most
``√(norm_constraint · lr² ⟨u, g⟩)``, not ``norm_constraint``), then
``v ← μ v + c u``, ``w ← w − lr · v``.

State: ``t``, ``v`` (like w) and per K-FAC layer ``A:<path>``, ``G:<path>``,
``Ainv:<path>``, ``Ginv:<path>``.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import backend
from ..checks import COUNT, FRACTION, NATURAL, POSITIVE, optional
from ..layers.conv import Conv2d
from ..layers.linear import Linear
from .base import Optimizer



def kfac_layers(model):
    """``[(path, layer)]`` of the Linear and Conv2d layers K-FAC preconditions."""
    return [(path, layer) for path, layer in model.net.leaves() if isinstance(layer, (Linear, Conv2d))]


@contextlib.contextmanager
def record_backward(layers):
    """While active, each layer's ``backward`` also stores ``(cache, dy)`` in the yielded dict."""
    records = {}

    def hook(path, layer):
        plain = type(layer).backward

        def backward(p, cache, dy, dp_out, need_dx=True):
            records[path] = (cache, dy)
            return plain(layer, p, cache, dy, dp_out, need_dx)
        return backward

    try:
        for path, layer in layers:
            layer.backward = hook(path, layer)
        yield records
    finally:
        for _, layer in layers:
            layer.__dict__.pop("backward", None)


def sampled_output_grad(loss_fn, z, rng):
    """Per-example ``∂(−log p(ỹ|z))/∂z`` with ỹ drawn from the model (n, classes):
    softmax cross-entropy: ``p − onehot(ỹ)``; squared error (unit Gaussian): ``z − ỹ``."""
    xp = backend.get_array_module(z)
    if hasattr(loss_fn, "sample_labels"):
        y = loss_fn.sample_labels(z, rng)
    else:
        y = z + xp.asarray(rng.standard_normal(z.shape), dtype=z.dtype)
    return loss_fn.grad(z, y) * z.shape[0]


def patches_and_cotangents(layer, cache, dy):
    """``(X, S)``: inputs as columns X (K, N) and output cotangents S (o, N), N = n·|T|."""
    if isinstance(layer, Linear):
        return cache.T, dy.T
    cols, _ = layer.unfolded(cache)                   # conv: im2col columns (K, n·L), either algorithm
    return cols, dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1)


def factors(layer, cache, dy):
    """The Kronecker factors ``(A, G)`` of one layer from its forward cache and
    per-example output cotangents ``dy`` (KFC scaling above)."""
    xp = backend.get_array_module(dy)
    X, S = patches_and_cotangents(layer, cache, dy)
    K, N = X.shape
    n = dy.shape[0]
    size = K + 1 if layer.bias else K
    A = xp.empty((size, size), dtype=X.dtype)
    A[:K, :K] = X @ X.T
    if layer.bias:  # homogeneous coordinate ā = (x, 1), without copying X
        s = X.sum(axis=1)
        A[:K, K], A[K, :K], A[K, K] = s, s, N
    A /= N
    G = (S @ S.T) / n          # = |T| · E_{n,t}[ds dsᵀ]
    return A, G


def damped_inverses(A, G, damping):
    """``((A + γ_A I)⁻¹, (G + γ_G I)⁻¹)`` with π-corrected Tikhonov damping
    (module docstring; π = 1 when the trace ratio is 0 or not finite)."""
    xp = backend.get_array_module(A)
    pi = float(xp.sqrt((xp.trace(A) / A.shape[0]) / (xp.trace(G) / G.shape[0])))
    if not np.isfinite(pi) or pi == 0:
        pi = 1.0
    root = damping ** 0.5
    eye_a = xp.eye(A.shape[0], dtype=A.dtype)
    eye_g = xp.eye(G.shape[0], dtype=G.dtype)
    return xp.linalg.inv(A + pi * root * eye_a), xp.linalg.inv(G + root / pi * eye_g)


def weight_matrix_views(layer, views, path):
    """The layer's weight (o, K) and bias (o,) views of a flat vector's ``views``."""
    W = views[f"{path}.weight"]
    return W.reshape(W.shape[0], -1), (views[f"{path}.bias"] if layer.bias else None)


def precondition(layer, path, g_views, u_views, Ainv, Ginv):
    """Write ``U = Ginv ∇W̄ Ainv`` (split back into weight and bias) into ``u_views``."""
    xp = backend.get_array_module(Ainv)
    gW, gb = weight_matrix_views(layer, g_views, path)
    uW, ub = weight_matrix_views(layer, u_views, path)
    grad = gW if gb is None else xp.concatenate([gW, gb[:, None]], axis=1)
    U = Ginv @ grad @ Ainv
    uW[...] = U[:, :gW.shape[1]]
    if ub is not None:
        ub[...] = U[:, -1]


class KFAC(Optimizer):
    """K-FAC/KFC: ``w ← w − lr·v,  v ← μv + (G+γ_G I)⁻¹ ∇W̄ (A+γ_A I)⁻¹`` per layer."""

    name = "kfac"
    # damping 0.1: with 0.01 the cnn-small/mnist5k training loss spikes (window mean 3.5).
    # cov_ema_decay 0.95: Martens & Grosse's (2015) value, between the supplement's
    # Table 1 grid points 0.9 and 0.99 (compare tunes over the grid itself).
    defaults = {"lr": 0.01, "damping": 0.1, "cov_ema_decay": 0.95, "inverse_every": 20,
                "momentum": 0.9, "norm_constraint": None, "seed": 0}
    ranges = {"lr": POSITIVE, "damping": POSITIVE, "cov_ema_decay": FRACTION,
              "inverse_every": COUNT, "momentum": FRACTION,
              "norm_constraint": optional(POSITIVE), "seed": NATURAL}

    def init(self, w):
        return {"t": 0, "v": w * 0}

    def update_factors(self, problem, lin, state):
        """EMA of the factors from one sampled-label backward pass at ``lin``."""
        layers = kfac_layers(problem.model)
        rng = np.random.default_rng([int(self.seed), int(state["t"])])
        dz = sampled_output_grad(problem.loss_fn, lin.output, rng)
        with record_backward(layers) as records:
            lin.backward(dz)
        decay = min(self.cov_ema_decay, 1.0 - 1.0 / (state["t"] + 1))
        for path, layer in layers:
            A, G = factors(layer, *records[path])
            for key, new in ((f"A:{path}", A), (f"G:{path}", G)):
                old = state.get(key)
                state[key] = new if old is None or decay == 0 else decay * old + (1 - decay) * new

    def refresh_inverses(self, problem, state):
        for path, _ in kfac_layers(problem.model):
            state[f"Ainv:{path}"], state[f"Ginv:{path}"] = damped_inverses(
                state[f"A:{path}"], state[f"G:{path}"], self.damping)

    def natural_gradient(self, problem, g, state):
        """The preconditioned gradient u (flat): K-FAC blocks, plain g elsewhere."""
        layout = problem.model.layout
        u = g.copy()
        g_views, u_views = layout.views(g), layout.views(u)
        for path, layer in kfac_layers(problem.model):
            precondition(layer, path, g_views, u_views,
                         state[f"Ainv:{path}"], state[f"Ginv:{path}"])
        return u

    def step(self, problem, w, state, batch):
        xp = backend.get_array_module(w)
        f, g, lin = self.gradient(problem, w, batch)
        self.update_factors(problem, lin, state)
        if state["t"] % self.inverse_every == 0:
            self.refresh_inverses(problem, state)
        u = self.natural_gradient(problem, g, state)
        scale = 1.0
        if self.norm_constraint is not None:
            sq = self.lr ** 2 * float(xp.dot(u, g))
            scale = min(1.0, (self.norm_constraint / sq) ** 0.5) if sq > 0 else 1.0
        v = state["v"]
        v *= self.momentum
        v += scale * u
        delta = self.lr * v
        state["t"] += 1
        info = {"loss": float(f), "step_norm": self.norm(delta), "damping": float(self.damping),
                "norm_scale": scale}
        return w - delta, state, info
