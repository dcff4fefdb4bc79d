"""Fully-connected layer  y = x Wᵀ + b.

Shapes: x (n, i), W (o, i), b (o,), y (n, o).

Derivatives (all linear algebra, no approximation).  ``dx, dW, db`` are
directions (R-op inputs) and ``dy`` the R-op output; a bar is a cotangent:
``ȳ`` (the ``dy`` argument of ``backward`` in the code), ``W̄, b̄, x̄`` what it
returns, and ``R{ȳ}`` (the ``ddy`` argument of ``backward_rop``) the R-op of ȳ.

* R-op:      dy = dx Wᵀ + x dWᵀ + db
* backward:  W̄ = ȳᵀ x,  b̄ = Σ_n ȳ,  x̄ = ȳ W
* R{backward} (bilinear in x and W):
             R{W̄} = R{ȳ}ᵀ x + ȳᵀ dx,  R{b̄} = Σ_n R{ȳ},  R{x̄} = R{ȳ} W + ȳ dW
* per-example squared gradients (exact diagonal GGN):
             g_n = ȳ_n x_nᵀ, so Σ_n g_n² = (ȳ²)ᵀ (x²),  Σ_n (b̄_n)² = Σ_n ȳ²
* Becker & LeCun (1988), with d2y the propagated second derivatives:
             d2W = d2yᵀ x²,  d2b = Σ_n d2y,  d2x = d2y W²
"""
from __future__ import annotations

from .base import Layer, fan_in_uniform


class Linear(Layer):
    """Affine map on the last axis; ``bias=False`` drops ``b``."""

    def __init__(self, out_features: int, bias: bool = True):
        self.out_features = int(out_features)
        self.bias = bool(bias)

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"Linear needs flat inputs (i,), got {in_shape}; add a Flatten")
        return (self.out_features,)

    def param_specs(self):
        specs = [("weight", (self.out_features, self.in_shape[0]), "fc.weight")]
        if self.bias:
            specs.append(("bias", (self.out_features,), "fc.bias"))
        return specs

    def init_params(self, rng):
        fan_in = self.in_shape[0]
        p = {"weight": fan_in_uniform(rng, (self.out_features, fan_in), fan_in)}
        if self.bias:
            p["bias"] = fan_in_uniform(rng, (self.out_features,), fan_in)
        return p

    def forward(self, p, x, train, state=None):
        y = x @ p["weight"].T
        if self.bias:
            y += p["bias"]
        return y, x

    def slice_cache(self, cache, size):
        return cache[:size]                      # the input x

    def rop(self, p, cache, dp, dx):
        x = cache
        dy = None
        if dp is not None:
            dy = x @ dp["weight"].T
            if self.bias:
                dy += dp["bias"]
        if dx is not None:
            t = dx @ p["weight"].T
            dy = t if dy is None else dy + t
        return dy

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        x = cache
        dp_out["weight"][...] = dy.T @ x
        if self.bias:
            dp_out["bias"][...] = dy.sum(axis=0)
        return dy @ p["weight"] if need_dx else None

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        x = cache
        ddw = ddy.T @ x
        if dx is not None:
            ddw += dy.T @ dx
        ddp_out["weight"][...] = ddw
        if self.bias:
            ddp_out["bias"][...] = ddy.sum(axis=0)
        if not need_dx:
            return None
        ddx = ddy @ p["weight"]
        if dp is not None:
            ddx += dy @ dp["weight"]
        return ddx

    def sq_grad(self, p, cache, dy, sq_out):
        x = cache
        dy2 = dy * dy
        sq_out["weight"] += dy2.T @ (x * x)
        if self.bias:
            sq_out["bias"] += dy2.sum(axis=0)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        x = cache
        d2p_out["weight"][...] = d2y.T @ (x * x)
        if self.bias:
            d2p_out["bias"][...] = d2y.sum(axis=0)
        return d2y @ (p["weight"] * p["weight"]) if need_dx else None

    def __repr__(self):
        return f"Linear({self.out_features}, bias={self.bias})"
