"""2-d convolution (cross-correlation, as PyTorch) via im2col and one GEMM.

Shapes: x (n, i, h, w), W (o, i, kh, kw), b (o,), y (n, o, ho, wo).  With the
columns ``X = im2col(x)`` of shape (K, n·L), K = i·kh·kw, L = ho·wo (layout and
its reasons in :mod:`hfmeta.layers.im2col`) and ``W`` read as an (o, K)
matrix, the layer is the matrix product

    Y = W X + b 1ᵀ            Y (o, n·L), returned as the NCHW view of y.

Everything below is linear algebra on that product (``colᵀ`` = col2im, the
adjoint of im2col).  ``dx, dW, db`` are directions and ``dY`` the R-op output;
a bar is a cotangent: ``Ȳ`` (the ``dy`` argument of ``backward`` in the code),
``W̄, b̄, x̄`` what it returns, ``R{Ȳ}`` (the ``ddy`` argument of
``backward_rop``) the R-op of Ȳ:

* R-op (Pearlmutter 1994):  dY = W im2col(dx) + dW X + db 1ᵀ
  -- the parameter part reuses the cached columns X; only a non-zero input
  direction dx is unfolded.
* backward:   W̄ = Ȳ Xᵀ,  b̄ = Ȳ 1,  x̄ = colᵀ(Wᵀ Ȳ)
* R{backward} (bilinear in x and W):
              R{W̄} = R{Ȳ} Xᵀ + Ȳ im2col(dx)ᵀ,  R{b̄} = R{Ȳ} 1,
              R{x̄}  = colᵀ(Wᵀ R{Ȳ} + dWᵀ Ȳ)
* per-example squared gradients (exact diagonal GGN, Dangel et al. 2020):
              g_n = Σ_l Ȳ[:, n, l] X[:, n, l]ᵀ  (sum over positions first), Σ_n g_n²
* Becker & LeCun (1988), d2Y the propagated second derivatives:
              d2W = d2Y (X²)ᵀ,  d2b = d2Y 1,  d2x = colᵀ((W²)ᵀ d2Y)

**Three algorithms, the same derivatives.**  ``algorithm="im2col"`` is the
matrix picture above.  ``algorithm="fft"`` (stride 1 only) computes the same
products one frequency at a time (:mod:`hfmeta.layers.spectral`): with ``^``
the real 2-d DFT on a grid large enough that nothing wraps, ``ŷ_f = X̂_f
conj(Ŵ_f)ᵀ``, so the R-op is ``dŶ = dX̂ conj(Ŵ)ᵀ + X̂ conj(dŴ)ᵀ``, the
backward ``x̄^ = ȳ̂ Ŵ``, ``W̄ ↔ Σ_n conj(ȳ̂)ᵀ X̂``, and R{backward} their
bilinear sums as above.  The forward cache then holds the spectra X̂ and Ŵ
(far smaller than the columns).  ``algorithm="shift"`` (stride 1 only)
writes the GEMM as a sum over the kernel's taps of products with shifted
views of the flat padded input (:mod:`hfmeta.layers.shift`): ``Y = Σ_ab W_ab
X_ab``, ``W̄_ab = Ȳ X_abᵀ``, ``x̄ ↔ Σ_ab W_abᵀ Ȳ`` placed back at shift ab;
its cache is the padded input.  Both unfold x on demand for ``sq_grad`` and
``backward_diag``.

``"auto"`` (default; :meth:`Conv2d.auto_algorithm`) picks, on the CPU, the
FFT for stride 1, kernels of at least 5×5 and at least 16 input channels
(``convnet``'s second layer: 5×5, 64 channels, where it needs about 6 times
fewer multiplications), shifted products for stride-1 kernels of at most 3×3
on 8 to 32 channels and 16×16 outputs or more (``resnet-mini``'s first two
stages, whose im2col columns are mostly memory traffic), else im2col.  On the
GPU ``"auto"`` is always im2col: there these nets are bound by the host
issuing kernels, not by multiplications, and the other two issue more of them
(H200, convnet, batch 128, float32, conv2 on im2col ÷ on the FFT,
round-robin in one run: forward+backward 0.74, Gv 0.65, MLHF step 0.75;
``docs/gpu_profile.py --sections conv2``).  :meth:`Conv2d.place` makes the
choice when the model learns its device.
"""
from __future__ import annotations

from ..backend import accumulate
from .base import Layer, fan_in_uniform, lean
from .im2col import col2im, im2col, output_size, pair
from .shift import ShiftPlan
from .spectral import SpectralPlan, conj_t

ALGORITHMS = ("auto", "im2col", "fft", "shift")


class Im2colCache(tuple):
    """The im2col forward's cache, the pair ``(cols, x_shape)``; with lean caches
    (:func:`hfmeta.layers.base.lean_caches`) ``cols`` is None and the input
    ``x`` (an attribute) is unfolded again by every pass that needs the columns."""

    def __new__(cls, cols, x_shape, x=None):
        cache = super().__new__(cls, (cols, tuple(x_shape)))
        cache.x = x
        return cache

    @property
    def cols(self):
        return self[0]

    @property
    def x_shape(self):
        return self[1]


class ShiftCache:
    """The shifted-product forward's cache: the flat padded input ``X`` of
    :meth:`hfmeta.layers.shift.ShiftPlan.signal`."""

    def __init__(self, X):
        self.X = X


class Conv2d(Layer):
    """``Conv2d(o, kernel_size, stride=1, padding=0, bias=True, algorithm="auto")``.

    ``kernel_size``, ``stride``, ``padding`` are ints or (h, w) pairs;
    ``padding="same"`` keeps h and w (odd kernels at stride 1 only);
    ``algorithm``: "auto", "im2col", "fft" or "shift" (the last two stride 1
    only), see above.
    """

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 algorithm: str = "auto"):
        self.out_channels = int(out_channels)
        self.kernel = pair(kernel_size)
        self.stride = pair(stride)
        if padding == "same":
            if self.stride != (1, 1) or self.kernel[0] % 2 == 0 or self.kernel[1] % 2 == 0:
                raise ValueError('padding="same" needs an odd kernel and stride 1, '
                                 f"got kernel {self.kernel}, stride {self.stride}")
            padding = (self.kernel[0] // 2, self.kernel[1] // 2)
        self.padding = pair(padding)
        self.bias = bool(bias)
        self.algorithm = self._checked(algorithm)
        self.plan = None                        # SpectralPlan when the FFT is used
        self.shift = None                       # ShiftPlan when shifted products are used

    def _checked(self, algorithm):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if algorithm in ("fft", "shift") and self.stride != (1, 1):
            raise ValueError(f'algorithm="{algorithm}" needs stride 1, got {self.stride}')
        return algorithm

    # -- shapes and parameters ------------------------------------------------
    def build(self, in_shape):
        out = super().build(in_shape)
        self.place("cpu")
        return out

    def place(self, device):
        """Pick the algorithm; ``"auto"`` (see above) is :meth:`auto_algorithm`'s."""
        algorithm = self.auto_algorithm(device) if self.algorithm == "auto" else self.algorithm
        self.plan = (SpectralPlan(self.in_shape[1:], self.kernel, self.padding)
                     if algorithm == "fft" else None)
        self.shift = (ShiftPlan(self.in_shape[1:], self.kernel, self.padding)
                      if algorithm == "shift" else None)

    def set_algorithm(self, algorithm, device):
        """Switch a built layer to ``algorithm`` (checked as by the constructor) on ``device``."""
        self.algorithm = self._checked(algorithm)
        self.place(device)

    @property
    def chosen_algorithm(self):
        """The algorithm :meth:`place` chose: ``"fft"``, ``"shift"`` or ``"im2col"``."""
        return "fft" if self.plan is not None else "shift" if self.shift is not None else "im2col"

    def auto_algorithm(self, device):
        """im2col on the GPU.  On the CPU, for stride 1: the FFT for kernels of at
        least 25 taps (5×5 and up) on at least 16 channels; shifted products for
        kernels of 2 to 9 taps (3×3 and below, not 1×1) on 8 to 32 channels and
        at least 256 output positions (16×16); else im2col.  (Measured at batch 128, one thread: shifted
        products take 0.45-0.8 of im2col's forward and backward time on 8-32
        channels at 16×16-32×32, and 1.05-1.12 on 64 or 128 channels or 8×8.)"""
        c = self.in_shape[0]
        taps = self.kernel[0] * self.kernel[1]
        ho, wo = self.out_shape[1:]
        if device != "cpu" or self.stride != (1, 1):
            return "im2col"
        if taps >= 25 and c >= 16:
            return "fft"
        if 1 < taps <= 9 and 8 <= c <= 32 and ho * wo >= 256:
            return "shift"
        return "im2col"

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"Conv2d needs inputs (c, h, w), got {in_shape}")
        c, h, w = in_shape
        return (self.out_channels,) + output_size(h, w, self.kernel, self.stride, self.padding)

    def weight_shape(self):
        return (self.out_channels, self.in_shape[0]) + self.kernel

    def param_specs(self):
        specs = [("weight", self.weight_shape(), "conv.weight")]
        if self.bias:
            specs.append(("bias", (self.out_channels,), "conv.bias"))
        return specs

    def init_params(self, rng):
        fan_in = self.in_shape[0] * self.kernel[0] * self.kernel[1]
        p = {"weight": fan_in_uniform(rng, self.weight_shape(), fan_in)}
        if self.bias:
            p["bias"] = fan_in_uniform(rng, (self.out_channels,), fan_in)
        return p

    # -- the matrix picture ---------------------------------------------------
    def _cols(self, x):
        return im2col(x, self.kernel, self.stride, self.padding)

    def _col2im(self, dcols, x_shape):
        return col2im(dcols, x_shape, self.kernel, self.stride, self.padding)

    def _matrix(self, y):
        """NCHW (n, o, ho, wo) -> (o, n·L); free when y is a view made by :meth:`_image`."""
        return y.transpose(1, 0, 2, 3).reshape(self.out_channels, -1)

    def _image(self, Y, x_shape):
        """(o, n·L) -> the NCHW view (n, o, ho, wo)."""
        n, _, h, w = x_shape
        out_hw = output_size(h, w, self.kernel, self.stride, self.padding)
        return Y.reshape((self.out_channels, n) + out_hw).transpose(1, 0, 2, 3)

    def _w(self, p):
        """The weight of ``p`` as an (o, K) matrix (a view)."""
        return p["weight"].reshape(self.out_channels, -1)

    def _apply(self, p, cols):
        """``W X (+ b)`` as an (o, n·L) matrix."""
        Y = self._w(p) @ cols
        if self.bias:
            Y += p["bias"][:, None]
        return Y

    def _weight_grad(self, dY, cols, out):
        out[...] = (dY @ cols.T).reshape(out.shape)

    # -- the Fourier picture (cache: spectra X̂ (B, n, c), Ŵ (B, o, c), and x) --
    def _fft_image(self, spec, bias):
        """(B, n, o) output spectrum (+ bias (o,) or None) -> y (n, o, ho, wo), contiguous."""
        y = self.plan.image(spec, self.plan.out_hw)
        if bias is not None:
            y += bias[:, None, None]
        return y

    def _fft_forward(self, p, x):
        X, Wk = self.plan.signal(x), self.plan.kernel_spectrum(p["weight"])
        y = self._fft_image(self.plan.product(X, conj_t(Wk)), p["bias"] if self.bias else None)
        return y, (X, Wk, x)

    def _fft_rop(self, p, cache, dp, dx):
        X, Wk, _ = cache
        Y = None
        if dx is not None:
            Y = self.plan.product(self.plan.signal(dx), conj_t(Wk))
        if dp is not None:
            dWk = self.plan.kernel_spectrum(dp["weight"])
            Y = accumulate(Y, self.plan.product(X, conj_t(dWk)))
        return self._fft_image(Y, dp["bias"] if dp is not None and self.bias else None)

    def _fft_backward(self, p, cache, dy, dp_out, need_dx):
        X, Wk, x = cache
        DY = self.plan.signal(dy)                                         # (B, n, o)
        dp_out["weight"][...] = self.plan.kernel_from(self.plan.product(conj_t(DY), X))
        if self.bias:
            dp_out["bias"][...] = dy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None
        return self.plan.image(self.plan.product(DY, Wk), x.shape[2:])

    def _fft_backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx):
        X, Wk, x = cache
        DY, DDY = self.plan.signal(dy), self.plan.signal(ddy)
        G = conj_t(DDY) @ X
        if dx is not None:
            G += conj_t(DY) @ self.plan.signal(dx)
        ddp_out["weight"][...] = self.plan.kernel_from(G)
        if self.bias:
            ddp_out["bias"][...] = ddy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None
        DX = DDY @ Wk
        if dp is not None:
            DX += DY @ self.plan.kernel_spectrum(dp["weight"])
        return self.plan.image(DX, x.shape[2:])

    # -- the shifted-product picture (cache: the flat padded input X) ------------
    def _shift_output(self, Yf, bias):
        """Yf (o, n·Hp·Wp) (+ bias (o,) or None) -> y (n, o, ho, wo), a view."""
        if bias is not None:
            Yf += bias[:, None]
        return self.shift.image(Yf)

    def _shift_forward(self, p, x):
        X = self.shift.signal(x)
        y = self._shift_output(self.shift.apply(p["weight"], X), p["bias"] if self.bias else None)
        return y, ShiftCache(X)

    def _shift_rop(self, p, cache, dp, dx):
        Yf = None
        if dx is not None:
            Yf = self.shift.apply(p["weight"], self.shift.signal(dx))
        if dp is not None:
            Yf = accumulate(Yf, self.shift.apply(dp["weight"], cache.X))
        return self._shift_output(Yf, dp["bias"] if dp is not None and self.bias else None)

    def _shift_backward(self, p, cache, dy, dp_out, need_dx):
        DY = self.shift.full(dy)
        dp_out["weight"][...] = self.shift.weight_grad(DY, cache.X)
        if self.bias:
            dp_out["bias"][...] = dy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None
        return self.shift.input(self.shift.transpose_apply(p["weight"], DY))

    def _shift_backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx):
        DY, DDY = self.shift.full(dy), self.shift.full(ddy)
        ddW = self.shift.weight_grad(DDY, cache.X)
        if dx is not None:
            ddW += self.shift.weight_grad(DY, self.shift.signal(dx))
        ddp_out["weight"][...] = ddW
        if self.bias:
            ddp_out["bias"][...] = ddy.sum(axis=(0, 2, 3))
        if not need_dx:
            return None
        Xbar = self.shift.transpose_apply(p["weight"], DDY)
        if dp is not None:
            Xbar += self.shift.transpose_apply(dp["weight"], DY)
        return self.shift.input(Xbar)

    def unfolded(self, cache):
        """``(cols, x_shape)`` of any algorithm's cache (the FFT, shifted products
        and a lean im2col cache unfold x on demand)."""
        if self.shift is not None:
            x = self.shift.input(cache.X)
            return self._cols(x), x.shape
        if self.plan is None:
            if cache.cols is None:
                return self._cols(cache.x), cache.x_shape
            return cache.cols, cache.x_shape
        x = cache[2]
        return self._cols(x), x.shape

    def slice_cache(self, cache, size):
        """The first ``size`` examples: spectra X̂[:, :size] and x[:size] (FFT); the
        first size·ho·wo im2col columns (example-major), or x[:size] when lean."""
        if self.plan is not None:
            X, Wk, x = cache
            return X[:, :size], Wk, x[:size]
        if self.shift is not None:                # the first examples' X is a prefix of X
            return ShiftCache(cache.X[:, :self.shift.length(size) + self.shift.tail])
        x_shape = (size,) + tuple(cache.x_shape[1:])
        if cache.cols is None:
            return Im2colCache(None, x_shape, cache.x[:size])
        per_example = cache.cols.shape[1] // cache.x_shape[0]
        return Im2colCache(cache.cols[:, :size * per_example], x_shape)

    # -- derivatives ----------------------------------------------------------
    def forward(self, p, x, train, state=None):
        if self.plan is not None:
            return self._fft_forward(p, x)
        if self.shift is not None:
            return self._shift_forward(p, x)
        cols = self._cols(x)
        y = self._image(self._apply(p, cols), x.shape)
        return y, (Im2colCache(None, x.shape, x) if lean() else Im2colCache(cols, x.shape))

    def rop(self, p, cache, dp, dx):
        if dp is None and dx is None:
            return None
        if self.plan is not None:
            return self._fft_rop(p, cache, dp, dx)
        if self.shift is not None:
            return self._shift_rop(p, cache, dp, dx)
        x_shape = cache.x_shape
        if dx is None:
            dY = self._apply(dp, self.unfolded(cache)[0])
        else:
            dY = self._w(p) @ self._cols(dx)
            if dp is not None:
                dY += self._apply(dp, self.unfolded(cache)[0])
        return self._image(dY, x_shape)

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        if self.plan is not None:
            return self._fft_backward(p, cache, dy, dp_out, need_dx)
        if self.shift is not None:
            return self._shift_backward(p, cache, dy, dp_out, need_dx)
        cols, x_shape = self.unfolded(cache)
        dY = self._matrix(dy)
        self._weight_grad(dY, cols, dp_out["weight"])
        del cols                                # recomputed ones (lean cache) go now
        if self.bias:
            dp_out["bias"][...] = dY.sum(axis=1)
        if not need_dx:
            return None
        return self._col2im(self._w(p).T @ dY, x_shape)

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        if self.plan is not None:
            return self._fft_backward_rop(p, cache, dy, dp, dx, ddy, ddp_out, need_dx)
        if self.shift is not None:
            return self._shift_backward_rop(p, cache, dy, dp, dx, ddy, ddp_out, need_dx)
        cols, x_shape = self.unfolded(cache)
        dY, ddY = self._matrix(dy), self._matrix(ddy)
        ddW = ddY @ cols.T
        del cols
        if dx is not None:
            ddW += dY @ self._cols(dx).T
        ddp_out["weight"][...] = ddW.reshape(ddp_out["weight"].shape)
        if self.bias:
            ddp_out["bias"][...] = ddY.sum(axis=1)
        if not need_dx:
            return None
        dcols = self._w(p).T @ ddY
        if dp is not None:
            dcols += self._w(dp).T @ dY
        return self._col2im(dcols, x_shape)

    def sq_grad(self, p, cache, dy, sq_out):
        cols, x_shape = self.unfolded(cache)
        n = x_shape[0]
        dy3 = dy.reshape(n, self.out_channels, -1)                       # (n, o, L)
        cols3 = cols.reshape(cols.shape[0], n, -1).transpose(1, 2, 0)    # (n, L, K) view
        g = dy3 @ cols3                                                  # (n, o, K) per example
        sq_out["weight"] += (g * g).sum(axis=0).reshape(sq_out["weight"].shape)
        if self.bias:
            gb = dy3.sum(axis=2)                                         # (n, o)
            sq_out["bias"] += (gb * gb).sum(axis=0)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        cols, x_shape = self.unfolded(cache)
        d2Y = self._matrix(d2y)
        self._weight_grad(d2Y, cols * cols, d2p_out["weight"])
        if self.bias:
            d2p_out["bias"][...] = d2Y.sum(axis=1)
        if not need_dx:
            return None
        w2 = self._w(p) ** 2
        return self._col2im(w2.T @ d2Y, x_shape)

    def __repr__(self):
        return (f"Conv2d({self.out_channels}, kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias}, "
                f"algorithm={self.algorithm!r})")
