"""Losses on logits z (n, c): value, gradient, Hessian-vector product, Hessian factor.

Both losses are *means over the batch*, so every derivative carries a 1/n.

Softmax cross-entropy  l = -(1/n) Σ_i log p_{i, y_i},  p_i = softmax(z_i)
    ∇_z l      = (p - onehot(y)) / n
    H_l u      = (p ⊙ u - p ⟨p, u⟩) / n            per example: (diag p - p pᵀ) u / n
    H_l        = S Sᵀ with S_i = (diag √p_i - p_i √p_iᵀ) / √n

Mean squared error  l = (1/2n) Σ_i ‖z_i - y_i‖²   (y real-valued, (n, c))
    ∇_z l = (z - y) / n,   H_l u = u / n,   S_i = I / √n

The factor ``S`` (n, c, c) gives the exact diagonal of the Gauss-Newton matrix
by back-propagating its c columns (Martens, Sutskever & Swersky 2012; Dangel
et al. 2020, BackPACK's DiagGGN).  ``symmetric=True`` returns the symmetric
square root of H_l instead (eigendecomposition of the c×c blocks).
"""
from __future__ import annotations

from .backend import get_array_module


class SoftmaxCrossEntropy:
    """Softmax cross-entropy with integer labels y (n,), averaged over the batch."""

    name = "xent"

    @staticmethod
    def probs(z):
        xp = get_array_module(z)
        e = xp.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def value(self, z, y):
        """Mean negative log-likelihood (a 0-d array, on z's device)."""
        xp = get_array_module(z)
        m = z.max(axis=1, keepdims=True)
        logsumexp = xp.log(xp.exp(z - m).sum(axis=1)) + m[:, 0]
        return (logsumexp - z[xp.arange(z.shape[0]), y]).mean()

    def grad(self, z, y):
        xp = get_array_module(z)
        g = self.probs(z)
        g[xp.arange(z.shape[0]), y] -= 1
        g /= z.shape[0]
        return g

    def value_and_grad(self, z, y):
        return self.value(z, y), self.grad(z, y)

    def hvp(self, z, y, u, p=None):
        """``H_l u`` with ``H_l = (diag p - p pᵀ)/n`` per example; pass ``p`` to reuse it."""
        p = self.probs(z) if p is None else p
        return (p * u - p * (p * u).sum(axis=1, keepdims=True)) / z.shape[0]

    def hessian_sqrt(self, z, y, symmetric=False):
        """``S`` (n, c, c) with ``H_l = Σ_i S_i S_iᵀ`` blockwise (columns back-propagated)."""
        xp = get_array_module(z)
        n, c = z.shape
        p = self.probs(z)
        if symmetric:
            h = xp.einsum("ij,jk->ijk", p, xp.eye(c, dtype=z.dtype)) - p[:, :, None] * p[:, None, :]
            lam, q = xp.linalg.eigh(h)
            lam = xp.clip(lam, 0, None)
            return (q * xp.sqrt(lam)[:, None, :]) @ q.transpose(0, 2, 1) / n ** 0.5
        sp = xp.sqrt(p)
        s = xp.einsum("ij,jk->ijk", sp, xp.eye(c, dtype=z.dtype)) - p[:, :, None] * sp[:, None, :]
        return s / n ** 0.5

    def accuracy(self, z, y):
        return (z.argmax(axis=1) == y).mean()

    def sample_labels(self, z, rng):
        """Labels drawn from the model's predictive distribution (for Monte-Carlo Fisher)."""
        xp = get_array_module(z)
        p = self.probs(z)
        u = xp.asarray(rng.random((z.shape[0], 1)), dtype=p.dtype)
        return (xp.cumsum(p, axis=1) < u).sum(axis=1).clip(0, z.shape[1] - 1)


class MeanSquaredError:
    """``(1/2n) Σ_i ‖z_i - y_i‖²`` with real targets y (n, c)."""

    name = "mse"

    def value(self, z, y):
        return 0.5 * ((z - y) ** 2).sum(axis=1).mean()

    def grad(self, z, y):
        return (z - y) / z.shape[0]

    def value_and_grad(self, z, y):
        return self.value(z, y), self.grad(z, y)

    def hvp(self, z, y, u, p=None):
        return u / z.shape[0]

    def hessian_sqrt(self, z, y, symmetric=False):
        xp = get_array_module(z)
        n, c = z.shape
        return xp.broadcast_to(xp.eye(c, dtype=z.dtype), (n, c, c)) / n ** 0.5

    def sample_labels(self, z, rng):
        """Targets ỹ = z + ε, ε ~ N(0, I), drawn from the model's predictive
        distribution (the unit-variance Gaussian whose negative log-likelihood
        this loss is) for the Monte-Carlo Fisher: ∇_z l(z, ỹ) = −ε/n, whose
        outer product averages to I/n² = H_l/n (so :func:`hfmeta.diagonal.mc_diag_ggn`
        scales each draw by √(n/M) to recover H_l).  ``rng`` is a host
        ``numpy.random.Generator``, so CPU and GPU draw the same targets."""
        xp = get_array_module(z)
        return z + xp.asarray(rng.standard_normal(z.shape), dtype=z.dtype)


LOSSES = {"xent": SoftmaxCrossEntropy, "mse": MeanSquaredError}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]()
