"""Batch normalisation (Ioffe & Szegedy 2015), differentiated through the batch statistics.

Shapes: x, y (n, c) for fully-connected inputs or (n, c, h, w) for
convolutional ones; gamma, beta, running_mean, running_var (c,).  The
statistics of channel c are taken over the *statistic axes* S -- n, or n, h, w
-- holding m = n (or n·h·w) values.  E[·] is the mean over S, Σ the sum.

Train mode (what the network computes while training)::

    μ = E[x],  σ² = E[(x − μ)²] (biased),  s = sqrt(σ² + eps)
    x̂ = (x − μ) / s,   y = γ x̂ + β

Every derivative goes *through* μ and σ²; with P(u) = u − E[u] − x̂ E[u x̂]
(the projection that removes a shift and a rescaling of x̂):

* R-op:      R{x̂} = P(dx) / s,           dy = γ R{x̂} + dγ x̂ + dβ
* backward:  x̄ = P(γ ȳ) / s,   γ̄ = Σ ȳ x̂,   β̄ = Σ ȳ

Eval mode uses the running statistics, x̂ = (x − r_mean) / s with the
constant s = sqrt(r_var + eps); P is the identity, so the layer is affine in x.

Running statistics follow PyTorch (momentum ρ, unbiased batch variance; m is
the count of values per channel, as above)::

    r_mean ← (1 − ρ) r_mean + ρ μ,   r_var ← (1 − ρ) r_var + ρ σ² m/(m − 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from .base import Layer


@dataclass
class BatchNormCache:
    """What the derivatives need from one forward pass."""
    xhat: object        # x̂, shape of x
    inv_std: object     # 1/s, broadcastable to x (c on axis 1)
    train: bool
    mean: object = None  # μ (c,), train mode only (for the running statistics)
    var: object = None   # biased σ² (c,), train mode only
    count: int = 0       # m, values per channel


class BatchNorm(Layer):
    """Batch normalisation over axis 1 (channels) of (n, c) or (n, c, h, w) inputs."""

    def __init__(self, eps: float = 1e-5):
        self.eps = float(eps)

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 3):
            raise ValueError(f"BatchNorm needs inputs (c,) or (c, h, w), got {in_shape}")
        self.channels = in_shape[0]
        # statistic axes: n, or n, h, w; parameters broadcast as (1, c) or (1, c, 1, 1)
        self.axes = (0,) + tuple(range(2, len(in_shape) + 1))
        self.bshape = (1, self.channels) + (1,) * (len(in_shape) - 1)
        return in_shape

    def param_specs(self):
        return [("gamma", (self.channels,), "bn.gamma"), ("beta", (self.channels,), "bn.beta")]

    def init_params(self, rng):
        return {"gamma": np.ones(self.channels), "beta": np.zeros(self.channels)}

    def state_specs(self):
        return [("running_mean", (self.channels,), 0.0), ("running_var", (self.channels,), 1.0)]

    # -- helpers: per-channel means and sums, broadcasting ---------------------
    def _mean(self, u):
        return u.mean(axis=self.axes, keepdims=True)

    def _sum(self, u):
        return u.sum(axis=self.axes).reshape(self.channels)

    def _b(self, v):
        """A (c,) vector shaped to broadcast against x."""
        return v.reshape(self.bshape)

    def _project(self, cache, u):
        """P(u) = u − E[u] − x̂ E[u x̂] in train mode; the identity in eval mode."""
        if not cache.train:
            return u
        return u - self._mean(u) - cache.xhat * self._mean(u * cache.xhat)

    # -- forward, R-op, backward ---------------------------------------------
    def forward(self, p, x, train, state=None):
        xp = backend.get_array_module(x)
        count = x.size // self.channels
        if train:
            if count < 2:
                raise ValueError("BatchNorm in train mode needs more than one value per channel")
            mu = self._mean(x)
            var = self._mean((x - mu) ** 2)
            inv_std = 1.0 / xp.sqrt(var + self.eps)
            cache = BatchNormCache((x - mu) * inv_std, inv_std, True,
                                   mu.reshape(self.channels), var.reshape(self.channels), count)
        else:
            if state is None:
                raise ValueError("BatchNorm in eval mode needs the running statistics (state)")
            inv_std = self._b(1.0 / xp.sqrt(state["running_var"] + self.eps))
            cache = BatchNormCache((x - self._b(state["running_mean"])) * inv_std, inv_std,
                                   False, count=count)
        y = self._b(p["gamma"]) * cache.xhat + self._b(p["beta"])
        return y, cache

    def rop(self, p, cache, dp, dx):
        """dy = γ R{x̂} + dγ x̂ + dβ,  R{x̂} = P(dx)/s."""
        dy = None
        if dx is not None:
            dy = self._b(p["gamma"]) * self._project(cache, dx) * cache.inv_std
        if dp is not None:
            t = self._b(dp["gamma"]) * cache.xhat + self._b(dp["beta"])
            dy = t if dy is None else dy + t
        return dy

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        """x̄ = (γ/s) (ȳ − E[ȳ] − x̂ E[ȳ x̂]),  γ̄ = Σ ȳ x̂,  β̄ = Σ ȳ."""
        dp_out["gamma"][...] = self._sum(dy * cache.xhat)
        dp_out["beta"][...] = self._sum(dy)
        if not need_dx:
            return None
        return self._project(cache, self._b(p["gamma"]) * dy) * cache.inv_std

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        """R{backward} along (dx, dγ, ddy), with g = γ ȳ, R{g} = dγ ȳ + γ ddy, r = R{x̂}.

        Derivation (train mode).  From σ² = E[(x − μ)²] and E[x̂] = 0:
        R{σ²} = 2 s E[x̂ dx], so R{s} = a := E[x̂ dx] and R{1/s} = −a/s².
        Differentiating x̄ = P(g)/s with R{P(g)} = P(R{g}) − r E[g x̂] − x̂ E[g r]::

            R{x̄} = −(a/s) x̄ + (P(R{g}) − r E[g x̂] − x̂ E[g r]) / s
            R{γ̄} = Σ (ddy x̂ + ȳ r),     R{β̄} = Σ ddy

        In eval mode s is constant and P the identity: R{x̄} = R{g}/s,
        r = dx/s.
        """
        r = None if dx is None else self._project(cache, dx) * cache.inv_std
        ddgamma = self._sum(ddy * cache.xhat)
        if r is not None:
            ddgamma += self._sum(dy * r)
        ddp_out["gamma"][...] = ddgamma
        ddp_out["beta"][...] = self._sum(ddy)
        if not need_dx:
            return None
        g = self._b(p["gamma"]) * dy
        rg = self._b(p["gamma"]) * ddy
        if dp is not None:
            rg = rg + self._b(dp["gamma"]) * dy
        inner = self._project(cache, rg)
        if cache.train and r is not None:
            xbar = self._project(cache, g) * cache.inv_std
            a = self._mean(cache.xhat * dx)
            inner = inner - r * self._mean(g * cache.xhat) - cache.xhat * self._mean(g * r)
            return inner * cache.inv_std - a * cache.inv_std * xbar
        return inner * cache.inv_std

    # -- running statistics ----------------------------------------------------
    def new_state(self, state, cache, momentum):
        """PyTorch: r ← (1 − ρ) r + ρ·batch statistic (ρ = ``momentum``), with the
        unbiased batch variance."""
        if not cache.train:
            return state
        unbiased = cache.var * (cache.count / (cache.count - 1))
        return {"running_mean": (1 - momentum) * state["running_mean"] + momentum * cache.mean,
                "running_var": (1 - momentum) * state["running_var"] + momentum * unbiased}

    # -- diagonal curvature hooks ----------------------------------------------
    def sq_grad(self, p, cache, dy, sq_out):
        """Eval mode: per-example γ̄_n = Σ_hw ȳ x̂, β̄_n = Σ_hw ȳ, squared and summed over n."""
        if cache.train:
            raise NotImplementedError("BatchNorm in train mode couples the examples of a batch: "
                                      "no per-example gradients")
        example_axes = self.axes[1:]  # h, w (none for fc inputs)
        g = (dy * cache.xhat).sum(axis=example_axes) if example_axes else dy * cache.xhat
        b = dy.sum(axis=example_axes) if example_axes else dy
        sq_out["gamma"][...] += (g * g).sum(axis=0)
        sq_out["beta"][...] += (b * b).sum(axis=0)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        """Becker–LeCun with the batch statistics held constant:
        d2x = d2y (γ/s)²,  d2γ = Σ d2y x̂²,  d2β = Σ d2y."""
        d2p_out["gamma"][...] = self._sum(d2y * cache.xhat ** 2)
        d2p_out["beta"][...] = self._sum(d2y)
        if not need_dx:
            return None
        return d2y * (self._b(p["gamma"]) * cache.inv_std) ** 2

    def __repr__(self):
        return f"BatchNorm(eps={self.eps})"
