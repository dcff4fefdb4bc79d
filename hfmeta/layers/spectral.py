"""Stride-1 convolution as a product in the Fourier domain (NumPy and CuPy).

Notation as :mod:`hfmeta.layers.im2col`: x (n, c, h, w), W (o, c, kh, kw),
padding (ph, pw), stride 1, y (n, o, ho, wo) with ``ho = h + 2ph − kh + 1``.

**The identity.**  Embed x at the front of an (Sh, Sw) grid (zeros after
it) and the kernel, shifted back by the padding, on the same grid::

    W'[(a − ph) mod Sh, (b − pw) mod Sw] = W[a, b]     (zero elsewhere)

Then for every W (circularly, indices mod S)::

    y[u, v] = Σ_{a,b} W'[a', b'] x[u + a', v + b']  =  Σ_{a,b} W[a, b] x[u + a − ph, v + b − pw]

and the circular correlation equals the zero-padded one of the layer as soon
as no window wraps onto real input: ``Sh ≥ h + ph`` and ``Sh ≥ ho + kh − 1 −
ph`` (likewise for w; both are ``h + ph`` at stride 1).  With the 2-d real
DFT ``^`` (``rfft2``; ``F = Sw // 2 + 1`` columns), per frequency f::

    ŷ_f = X̂_f conj(Ŵ'_f)ᵀ         X̂_f (n, c),  Ŵ'_f (o, c),  ŷ_f (n, o)

one complex matrix product per frequency (B = Sh·F of them) instead of the
(o, c·kh·kw)·(c·kh·kw, n·L) GEMM of im2col: for a 5×5 kernel on 16×16
inputs about 6 times fewer multiplications, and no (c·kh·kw, n·L) columns.

**The adjoints** follow from the circular picture, where they are exact for
every S (the crop to (ho, wo) and the embedding of x are each other's
adjoints' partners, and the identity above holds for every W)::

    x̄ = crop_h(irfft2(Ŵ'_f ȳ̂_f))        (ȳ embedded at the front like x)
    W̄' = irfft2(Σ_n conj(ȳ̂_f)ᵀ X̂_f),   W̄[a, b] = W̄'[(a − ph) mod Sh, (b − pw) mod Sw]

**Scaling.**  Signals (x, ȳ) are transformed with ``norm="ortho"`` and
images are recovered with ``norm="ortho"`` while the kernel is transformed
unnormalised (``X̂ = √N X_o`` with N = Sh·Sw, so ``irfft2(conj(Ŵ) X̂) =
irfft2_ortho(conj(Ŵ) X_o)``); the kernel gradient, a sum of two ortho
spectra, is recovered with the unnormalised inverse (``norm="forward"``).
(NumPy's pocketfft runs the ortho transforms of float32 data about three
times faster than the unnormalised ones.)

**Layout.**  Spectra of signals are kept as (B, n, c) arrays -- frequency
first -- so every product is one batched complex GEMM; one transpose copy
(of an array the size of the spectrum, far smaller than im2col columns)
converts to and from the (n, c, Sh, F) layout of the FFT.
"""
from __future__ import annotations

from ..backend import get_array_module


class SpectralPlan:
    """Grid sizes and the transforms of one stride-1 convolution.

    ``SpectralPlan(in_hw, kernel, padding)``; ``grid`` = (Sh, Sw),
    ``bins`` = B = Sh·(Sw // 2 + 1).
    """

    def __init__(self, in_hw, kernel, padding):
        (h, w), (kh, kw), (ph, pw) = in_hw, kernel, padding
        self.in_hw, self.kernel, self.padding = (h, w), (kh, kw), (ph, pw)
        self.out_hw = (h + 2 * ph - kh + 1, w + 2 * pw - kw + 1)
        self.grid = (max(h + ph, self.out_hw[0] + kh - 1 - ph),
                     max(w + pw, self.out_hw[1] + kw - 1 - pw))
        self.cols = self.grid[1] // 2 + 1
        self.bins = self.grid[0] * self.cols

    # -- signals: (m, k, ·, ·) real <-> (B, m, k) spectrum ---------------------
    def signal(self, a):
        """Ortho spectrum of ``a`` (m, k, sh, sw) embedded at the front of the grid, as (B, m, k)."""
        xp = get_array_module(a)
        m, k = a.shape[:2]
        spec = xp.fft.rfft2(a, s=self.grid, norm="ortho")               # (m, k, Sh, F)
        return xp.ascontiguousarray(spec.reshape(m, k, self.bins).transpose(2, 0, 1))

    def image(self, spec, out_hw):
        """Inverse of :meth:`signal`: (B, m, k) ortho spectrum -> (m, k, *out_hw) real
        (the front of the grid; a view)."""
        xp = get_array_module(spec)
        _, m, k = spec.shape
        full = xp.ascontiguousarray(spec.transpose(1, 2, 0)).reshape(m, k, self.grid[0], self.cols)
        return xp.fft.irfft2(full, s=self.grid, norm="ortho")[..., :out_hw[0], :out_hw[1]]

    # -- kernels: (o, c, kh, kw) real <-> (B, o, c) spectrum -------------------
    def kernel_spectrum(self, W):
        """Unnormalised spectrum of the shifted kernel W', as (B, o, c)."""
        xp = get_array_module(W)
        o, c, kh, kw = W.shape
        shifted = xp.zeros((o, c) + self.grid, dtype=W.dtype)
        shifted[..., :kh, :kw] = W
        shifted = xp.roll(shifted, (-self.padding[0], -self.padding[1]), axis=(2, 3))
        spec = xp.fft.rfft2(shifted)
        return xp.ascontiguousarray(spec.reshape(o, c, self.bins).transpose(2, 0, 1))

    def kernel_from(self, spec):
        """W̄ (o, c, kh, kw) from ``Σ conj(ȳ̂)ᵀ X̂`` of ortho spectra, (B, o, c)."""
        xp = get_array_module(spec)
        _, o, c = spec.shape
        full = xp.ascontiguousarray(spec.transpose(1, 2, 0)).reshape(o, c, self.grid[0], self.cols)
        shifted = xp.fft.irfft2(full, s=self.grid, norm="forward")
        shifted = xp.roll(shifted, self.padding, axis=(2, 3))
        return shifted[..., :self.kernel[0], :self.kernel[1]]


def conj_t(a):
    """``conj(a)ᵀ`` of a batch of matrices (…, p, q) -> (…, q, p)."""
    xp = get_array_module(a)
    return xp.conj(a).swapaxes(-1, -2)
