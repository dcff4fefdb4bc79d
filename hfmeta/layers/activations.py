"""Elementwise ReLU  y = max(x, 0).

The cache is the output ``y`` itself (alive anyway as the next layer's input),
and the mask is recomputed as ``y > 0``.  ReLU is piecewise linear, so

* R-op:      dy = [y > 0] ⊙ dx
* backward:  dx = [y > 0] ⊙ dy

and its second derivative is zero almost everywhere: R{backward} and the
Becker-LeCun pass both just apply the mask (mask² = mask).
"""
from __future__ import annotations

from ..backend import get_array_module
from .base import Layer


class ReLU(Layer):
    def forward(self, p, x, train, state=None):
        xp = get_array_module(x)
        y = xp.maximum(x, 0)     # one pass; keeps dtype (a Python 0 does not promote)
        return y, y

    def slice_cache(self, cache, size):
        return cache[:size]                      # the output y

    def rop(self, p, cache, dp, dx):
        if dx is None:
            return None
        return dx * (cache > 0)

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        return dy * (cache > 0) if need_dx else None

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        return ddy * (cache > 0) if need_dx else None

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        return d2y * (cache > 0) if need_dx else None
