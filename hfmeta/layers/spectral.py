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
Every spectrum here is that of a real signal, so in the columns v = 0 and
v = Sw/2 (even Sw) row Sh − u is the conjugate of row u; every product of two
such spectra is too, and :meth:`SpectralPlan.product` multiplies only the
independent bins and fills the (Sh − 1)//2 mirrored ones of each such column
by conjugation (164 of 180 bins multiplied on an 18×18 grid).

**The adjoints** follow from the circular picture, where they are exact for
every S (the crop to (ho, wo) and the embedding of x are each other's
adjoints' partners, and the identity above holds for every W)::

    x̄ = crop_h(irfft2(ȳ̂_f Ŵ'_f))      ȳ̂_f (n, o), Ŵ'_f (o, c) (ȳ embedded at the front like x)
    W̄' = irfft2(Σ_n conj(ȳ̂_f)ᵀ X̂_f),   W̄[a, b] = W̄'[(a − ph) mod Sh, (b − pw) mod Sw]

**Scaling.**  Signals (x, ȳ) are transformed with ``norm="ortho"`` and
images are recovered with ``norm="ortho"`` while the kernel spectrum is
unnormalised (``X̂ = √N X_o`` with N = Sh·Sw, so ``irfft2(conj(Ŵ) X̂) =
irfft2_ortho(conj(Ŵ) X_o)``); the kernel gradient, a sum of products of two
ortho spectra, is recovered with the unnormalised inverse (Σ_f with no 1/N:
NumPy's ``norm="forward"``, not its default).  Signal and image
transforms run with ``norm="ortho"`` (NumPy's pocketfft runs ortho transforms
of float32 data about three times faster than unnormalised ones); the kernel
transforms, which touch only the kh·kw taps of the shifted kernel, are small
products with DFT tables (:meth:`SpectralPlan.kernel_spectrum`).

**Layout.**  Spectra are kept as (B, n, c) arrays -- frequency first -- so
every product is one batched complex GEMM.  The transforms run over the
first two axes of (Sh, Sw, n, c) grids, which yields that layout without a
transpose of the spectrum: signals are transposed while being embedded in
the grid, and images are copied out of the (Sh, Sw, n, o) grid as
C-contiguous NCHW arrays (:meth:`SpectralPlan.image`).
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
        self.root_n = float(self.grid[0] * self.grid[1]) ** 0.5

    # -- signals: (m, k, ·, ·) real <-> (B, m, k) spectrum ---------------------
    def signal(self, a):
        """Ortho spectrum of ``a`` (m, k, sh, sw) embedded at the front of the grid, as (B, m, k).

        The grid is laid out (Sh, Sw, m, k), so the 2-d transform over the
        first two axes yields the frequency-first layout directly.
        """
        xp = get_array_module(a)
        m, k, sh, sw = a.shape
        grid = xp.zeros(self.grid + (m, k), dtype=a.dtype)
        # (m, k, sh, sw) -> (m, sh·sw, k) -> the grid's (sh, sw, m, k): two moves that
        # keep a contiguous inner axis each (~30% faster than one 4-d transpose)
        mhwk = xp.ascontiguousarray(a.reshape(m, k, sh * sw).transpose(0, 2, 1))
        grid[:sh, :sw] = mhwk.reshape(m, sh, sw, k).transpose(1, 2, 0, 3)
        spec = xp.fft.rfftn(grid, axes=(0, 1), norm="ortho")           # (Sh, F, m, k)
        return spec.reshape(self.bins, m, k)

    def image(self, spec, out_hw):
        """Inverse of :meth:`signal`: (B, m, k) ortho spectrum -> (m, k, *out_hw) real,
        the front of the grid, as a C-contiguous NCHW array (the pooling and
        elementwise layers that follow stream through it far faster than
        through an NCHW view of the (Sh, Sw, m, k) grid)."""
        xp = get_array_module(spec)
        _, m, k = spec.shape
        full = xp.fft.irfftn(spec.reshape(self.grid[0], self.cols, m, k), s=self.grid,
                             axes=(0, 1), norm="ortho")
        # (h, w, m, k) -> (m, h, w, k) -> (m, k, h, w): two transposes that keep a
        # contiguous inner axis each are cheaper than one that does not
        mhwk = xp.ascontiguousarray(full[:out_hw[0], :out_hw[1]].transpose(2, 0, 1, 3))
        return xp.ascontiguousarray(mhwk.transpose(0, 3, 1, 2))

    # -- products: one complex matrix product per frequency ---------------------
    def product(self, a, b):
        """``a_f @ b_f`` for every bin f: (B, p, q) @ (B, q, r) -> (B, p, r), with
        a and b spectra of real signals (either may be a conjugate or a
        transposed view of one).

        A real signal's spectrum is Hermitian, ``Â[−u, −v] = conj(Â[u, v])``;
        in the half spectrum of ``rfft2`` that ties only the columns that are
        their own mirror (v = 0 and, for even Sw, the Nyquist column v = Sw/2):
        there row u > Sh/2 is the conjugate of row Sh − u.  Products of such
        spectra inherit the symmetry (``a_{−f} b_{−f} = conj(a_f b_f)``), so
        those rows -- 16 of the 180 bins of an 18×18 grid, 9% of the GEMM
        work -- are filled by conjugation instead of being multiplied.
        """
        xp = get_array_module(a)
        Sh, F = self.grid[0], self.cols
        a4, b4 = a.reshape((Sh, F) + a.shape[1:]), b.reshape((Sh, F) + b.shape[1:])
        out = xp.empty((Sh, F, a.shape[1], b.shape[2]),
                       dtype=xp.result_type(a.dtype, b.dtype))
        h = Sh // 2 + 1                                        # rows 0..Sh/2: every column
        mirror = (0, F - 1) if self.grid[1] % 2 == 0 else (0,)
        inner = slice(1, F - 1) if self.grid[1] % 2 == 0 else slice(1, F)
        xp.matmul(a4[:h], b4[:h], out=out[:h])
        xp.matmul(a4[h:, inner], b4[h:, inner], out=out[h:, inner])
        for v in mirror:                                       # rows h..Sh−1 <- Sh−h..1
            out[h:, v] = xp.conj(out[Sh - h:0:-1, v])
        return out.reshape(self.bins, a.shape[1], b.shape[2])

    # -- kernels: (o, c, kh, kw) real <-> (B, o, c) spectrum -------------------
    # The shifted kernel has only kh·kw non-zero taps, at rows r_a = (a − ph) mod Sh
    # and columns c_b = (b − pw) mod Sw, so both kernel transforms are small
    # matrix products with DFT tables instead of transforms of the whole grid:
    #   Ŵ[u, v] = Σ_{a,b} e^{−2πi u r_a/Sh} e^{−2πi v c_b/Sw} W[a, b]            (u < Sh, v < F)
    #   W̄[a, b] = Σ_v ω_v Re(e^{2πi v c_b/Sw} Σ_u e^{2πi u r_a/Sh} Ĝ[u, v])   (ω_v = 1 for
    #             v = 0 and the Nyquist column of an even Sw, else 2: the real inverse)

    def _tables(self, xp, dtype):
        """``(E_h (Sh, kh), E_w (F, kw), D_h (kh, Sh), C_w (kw, F), S_w (kw, F))``,
        the DFT tables above (complex for ``dtype``'s precision), cached per array
        module and dtype."""
        import numpy as np
        key = (xp.__name__, np.dtype(dtype).str)
        cache = self.__dict__.setdefault("_table_cache", {})
        if key not in cache:
            (Sh, Sw), (kh, kw), (ph, pw) = self.grid, self.kernel, self.padding
            rows = np.array([(a - ph) % Sh for a in range(kh)])
            cols = np.array([(b - pw) % Sw for b in range(kw)])
            u, v = np.arange(Sh), np.arange(self.cols)
            ang_h = 2 * np.pi * ((u[:, None] * rows[None, :]) % Sh) / Sh      # (Sh, kh)
            ang_w = 2 * np.pi * ((v[:, None] * cols[None, :]) % Sw) / Sw      # (F, kw)
            weight = np.where((v == 0) | (2 * v == Sw), 1.0, 2.0)[None, :]    # ω_v
            cos_w, sin_w = np.cos(ang_w).T * weight, np.sin(ang_w).T * weight   # (kw, F)
            sin_w[:, (v == 0) | (2 * v == Sw)] = 0.0    # the real inverse drops Im at DC, Nyquist
            cplx = np.result_type(np.dtype(dtype), np.complex64)
            real = np.finfo(cplx).dtype
            cache[key] = (xp.asarray(np.exp(-1j * ang_h), dtype=cplx),
                          xp.asarray(np.exp(-1j * ang_w), dtype=cplx),
                          xp.asarray(np.exp(1j * ang_h).T, dtype=cplx),
                          xp.asarray(cos_w, dtype=real), xp.asarray(sin_w, dtype=real))
        return cache[key]

    def kernel_spectrum(self, W):
        """Unnormalised spectrum of the shifted kernel W', as (B, o, c)."""
        xp = get_array_module(W)
        o, c, kh, kw = W.shape
        E_h, E_w, _, _, _ = self._tables(xp, W.dtype)
        taps = W.reshape(o * c, kh, kw).transpose(1, 2, 0).astype(E_w.dtype)  # (kh, kw, o·c)
        cols = E_w @ taps                                                     # (kh, F, o·c)
        spec = E_h @ cols.reshape(kh, -1)                                     # (Sh, F·o·c)
        return spec.reshape(self.bins, o, c)

    def kernel_from(self, spec):
        """W̄ (o, c, kh, kw) from ``Σ conj(ȳ̂)ᵀ X̂`` of ortho spectra, (B, o, c)."""
        xp = get_array_module(spec)
        _, o, c = spec.shape
        kh, kw = self.kernel
        _, _, D_h, C_w, S_w = self._tables(xp, spec.real.dtype)
        Z = (D_h @ spec.reshape(self.grid[0], -1)).reshape(kh, self.cols, o * c)   # (kh, F, o·c)
        out = C_w @ xp.ascontiguousarray(Z.real)                             # (kh, kw, o·c)
        out -= S_w @ xp.ascontiguousarray(Z.imag)
        return out.reshape(kh, kw, o, c).transpose(2, 3, 0, 1)


def conj_t(a):
    """``conj(a)ᵀ`` of a batch of matrices (…, p, q) -> (…, q, p)."""
    xp = get_array_module(a)
    return xp.conj(a).swapaxes(-1, -2)
