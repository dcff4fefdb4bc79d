"""Stride-1 convolution as a sum of shifted matrix products (NumPy and CuPy).

Notation as :mod:`hfmeta.layers.im2col`: x (n, c, h, w), W (o, c, kh, kw),
padding (ph, pw), stride 1, padded grid (Hp, Wp) = (h + 2ph, w + 2pw),
y (n, o, ho, wo) with ``ho = Hp − kh + 1``, ``wo = Wp − kw + 1``.

**The identity.**  Lay the padded input out channel-major and flat, with a
zero tail of ``t = (kh − 1)·Wp + (kw − 1)`` entries::

    X[:, m·Hp·Wp + u·Wp + v] = xpad[m, :, u, v]        X (c, n·Hp·Wp + t)

For output (i, j) of example m, with flat index q = m·Hp·Wp + i·Wp + j, the
window's tap (a, b) sits at q + a·Wp + b, so

    y[m, :, i, j] = Σ_{a,b} W_ab xpad[m, :, i + a, j + b] = Σ_{a,b} W_ab X[:, q + s_ab],
    s_ab = a·Wp + b,   W_ab = W[:, :, a, b]  (o, c)

and the output on the whole padded grid ("full", Yf (o, n·Hp·Wp)) is

    Yf = Σ_{a,b} W_ab X[:, s_ab : s_ab + n·Hp·Wp]

kh·kw GEMMs over shifted *views* of X.  The entries with i < ho and j < wo
are the layer's output; the others are discarded.  No (c·kh·kw, n·ho·wo)
columns are ever formed: the input is read kh·kw times in place.

**The adjoints.**  With Ȳf the output cotangent embedded on the padded grid,
zero at the discarded positions (:meth:`ShiftPlan.full`)::

    W̄_ab = Ȳf X[:, s_ab : s_ab + n·Hp·Wp]ᵀ
    X̄[:, s_ab : s_ab + n·Hp·Wp] += W_abᵀ Ȳf        (x̄ is the crop of X̄)

Nothing crosses between examples: a kept output of example m reads only
m's own padded image (q + s_ab < (m + 1)·Hp·Wp), and the discarded outputs,
which may read the next one, carry zero cotangents.  So the first k examples'
X is a prefix of X (:meth:`Conv2d.slice_cache`).

**Cost.**  The same multiplications as im2col's GEMM, over Hp·Wp instead of
ho·wo positions ((34/32)² = 1.13 for a 3×3 'same' convolution of 32×32
images), but no columns written and read back: on the CPU, where the
columns' memory traffic dominates small-channel 3×3 convolutions, this is
what ``algorithm="auto"`` picks for them (:meth:`Conv2d.place`).  On the GPU
its kh·kw products are kh·kw kernel launches, so there im2col stays.
"""
from __future__ import annotations

from ..backend import accumulate, get_array_module


class ShiftPlan:
    """Grid sizes and the shifted products of one stride-1 convolution.

    ``in_hw`` (h, w), ``kernel`` (kh, kw), ``padding`` (ph, pw).
    """

    def __init__(self, in_hw, kernel, padding):
        (self.h, self.w), (self.kh, self.kw), (self.ph, self.pw) = in_hw, kernel, padding
        self.Hp, self.Wp = self.h + 2 * self.ph, self.w + 2 * self.pw
        self.out_hw = (self.Hp - self.kh + 1, self.Wp - self.kw + 1)
        self.tail = (self.kh - 1) * self.Wp + (self.kw - 1)
        self.shifts = [(a, b, a * self.Wp + b) for a in range(self.kh) for b in range(self.kw)]

    def length(self, n):
        """Flat length n·Hp·Wp of the padded grid of n examples."""
        return n * self.Hp * self.Wp

    def count(self, X):
        """Number of examples in a flat signal X (c, n·Hp·Wp + t)."""
        return (X.shape[1] - self.tail) // (self.Hp * self.Wp)

    def signal(self, x):
        """x (n, c, h, w) -> X (c, n·Hp·Wp + t): padded, channel-major, flat, zero tail."""
        xp = get_array_module(x)
        n, c = x.shape[:2]
        X = xp.zeros((c, self.length(n) + self.tail), dtype=x.dtype)
        grid = X[:, :self.length(n)].reshape(c, n, self.Hp, self.Wp)
        grid[:, :, self.ph:self.ph + self.h, self.pw:self.pw + self.w] = x.transpose(1, 0, 2, 3)
        return X

    def input(self, X):
        """The inverse of :meth:`signal`: the (n, c, h, w) view of x inside X."""
        n = self.count(X)
        grid = X[:, :self.length(n)].reshape(X.shape[0], n, self.Hp, self.Wp)
        return grid[:, :, self.ph:self.ph + self.h, self.pw:self.pw + self.w].transpose(1, 0, 2, 3)

    def full(self, dy):
        """dy (n, o, ho, wo) -> Yf (o, n·Hp·Wp), zero at the discarded positions."""
        xp = get_array_module(dy)
        n, o = dy.shape[:2]
        Yf = xp.zeros((o, self.length(n)), dtype=dy.dtype)
        ho, wo = self.out_hw
        Yf.reshape(o, n, self.Hp, self.Wp)[:, :, :ho, :wo] = dy.transpose(1, 0, 2, 3)
        return Yf

    def image(self, Yf):
        """Yf (o, n·Hp·Wp) -> the kept outputs as an (n, o, ho, wo) view."""
        o = Yf.shape[0]
        n = Yf.shape[1] // (self.Hp * self.Wp)
        ho, wo = self.out_hw
        return Yf.reshape(o, n, self.Hp, self.Wp)[:, :, :ho, :wo].transpose(1, 0, 2, 3)

    def apply(self, W, X):
        """Yf = Σ_ab W_ab X[:, s_ab : s_ab + L]  (o, L), L = n·Hp·Wp; W (o, c, kh, kw)."""
        xp = get_array_module(X)
        taps = xp.ascontiguousarray(W.transpose(2, 3, 0, 1))       # (kh, kw, o, c)
        L = X.shape[1] - self.tail
        Yf = None
        for a, b, s in self.shifts:
            Yf = accumulate(Yf, taps[a, b] @ X[:, s:s + L])
        return Yf

    def weight_grad(self, Yf, X):
        """W̄ (o, c, kh, kw) with W̄_ab = Yf X[:, s_ab : s_ab + L]ᵀ."""
        xp = get_array_module(X)
        L = Yf.shape[1]
        out = xp.empty((Yf.shape[0], X.shape[0], self.kh, self.kw), dtype=X.dtype)
        for a, b, s in self.shifts:
            out[:, :, a, b] = Yf @ X[:, s:s + L].T
        return out

    def transpose_apply(self, W, Yf):
        """X̄ (c, L + t) with X̄[:, s_ab : s_ab + L] += W_abᵀ Yf: the adjoint of :meth:`apply`."""
        xp = get_array_module(Yf)
        taps = xp.ascontiguousarray(W.transpose(2, 3, 1, 0))       # (kh, kw, c, o)
        L = Yf.shape[1]
        Xbar = xp.zeros((W.shape[1], L + self.tail), dtype=Yf.dtype)
        for a, b, s in self.shifts:
            Xbar[:, s:s + L] += taps[a, b] @ Yf
        return Xbar
