"""Flatten (n, c, h, w) -> (n, c·h·w): a reshape, so every derivative is a reshape."""
from __future__ import annotations

import numpy as np

from .base import Layer


class Flatten(Layer):
    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, p, x, train, state=None):
        return x.reshape(x.shape[0], -1), x.shape

    def slice_cache(self, cache, size):
        return (size,) + tuple(cache[1:])        # x's shape

    def rop(self, p, cache, dp, dx):
        return None if dx is None else dx.reshape(dx.shape[0], -1)

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        return dy.reshape(cache) if need_dx else None

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        return ddy.reshape(cache) if need_dx else None

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        return d2y.reshape(cache) if need_dx else None
