"""Pooling over (h, w): max, average and global average (no parameters).

Shapes: x (n, c, h, w) -> y (n, c, ho, wo), kernel (kh, kw), stride (sh, sw)
(default: the kernel), padding (ph, pw) at most half the kernel (PyTorch's
rule, so every window holds at least one real input); ``ho``, ``wo`` as in
:func:`hfmeta.layers.im2col.output_size` (floor mode).

Each pooled output reads one tap (a, b) of its window per kernel offset, so
every pass (except a tiling max pool's gather/scatter and its 2×2 forward by
two halving passes, see :class:`MaxPool2d`) is a loop over the kh·kw offsets
with strided slices of the padded input (:func:`hfmeta.layers.im2col.windows`);
backward passes *add* into those slices, which handles overlapping windows
without scatter-add.

* MaxPool2d  y = max_k xpad_k (padding -inf).  The winning offset k* of each
  window is cached; given it the layer is linear, so
  R-op dy = dx_{k*},  backward dx_{k*} += dy,  R{backward} = backward(ddy),
  Becker–LeCun d2x_{k*} += d2y (its own second derivative is zero).
* AvgPool2d  y = Σ_k xpad_k / (kh·kw) (zero padding counted, PyTorch's
  ``count_include_pad=True``): linear, backward spreads dy / (kh·kw),
  Becker–LeCun spreads d2y / (kh·kw)².
* GlobalAvgPool  y = mean_{h,w} x, (n, c, h, w) -> (n, c):
  backward dy / (h·w), Becker–LeCun d2y / (h·w)².
"""
from __future__ import annotations

from ..backend import accumulate, get_array_module
from .base import Layer
from .im2col import output_size, pad, pair, unpad, windows


class _Pool2d(Layer):
    """Shared hyper-parameters and shapes of the windowed pools."""

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel = pair(kernel_size)
        self.stride = pair(kernel_size if stride is None else stride)
        self.padding = pair(padding)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"padding {self.padding} must be at most half the kernel {self.kernel}")

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"{type(self).__name__} needs inputs (c, h, w), got {in_shape}")
        c, h, w = in_shape
        return (c,) + output_size(h, w, self.kernel, self.stride, self.padding)

    def _out_hw(self, x_shape):
        return output_size(x_shape[2], x_shape[3], self.kernel, self.stride, self.padding)

    def _windows(self, x_shape):
        return windows(self.kernel, self.stride, self._out_hw(x_shape))

    def _padded_zeros(self, like, x_shape):
        xp = get_array_module(like)
        n, c, h, w = x_shape
        ph, pw = self.padding
        return xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=like.dtype)

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        # linear in x (max pool: given its cached argmax) and no parameters
        return self.backward(p, cache, ddy, ddp_out, need_dx)

    def __repr__(self):
        return f"{type(self).__name__}(kernel={self.kernel}, stride={self.stride}, padding={self.padding})"


class MaxPoolCache(tuple):
    """``(argmax, x_shape)`` of a :class:`MaxPool2d` forward.  A tiling pool's
    derivative passes memoise here: ``winners`` {element strides: flat winner
    index} and ``relu_mask`` (the mask of a ReLU just before the pool, at the
    winners)."""
    winners = None
    relu_mask = None


def _dense_view(a):
    """``(flat view, element strides)`` when ``a``'s elements fill one contiguous
    block in some axis order (C order, or an NCHW view of an (o, n, h, w) array
    such as an im2col convolution's output), else None."""
    order = sorted(range(a.ndim), key=lambda d: a.strides[d], reverse=True)
    t = a.transpose(order)
    if not t.flags.c_contiguous:
        return None
    return t.reshape(-1), tuple(s // a.itemsize for s in a.strides)


def _flat(a):
    """:func:`_dense_view` of ``a``, or of a C-ordered copy when ``a`` is not dense."""
    view = _dense_view(a)
    if view is None:
        view = _dense_view(get_array_module(a).ascontiguousarray(a))
    return view


class MaxPool2d(_Pool2d):
    """Max over each window; the cache is the winning offset k* (uint8; int32
    for windows of more than 256 taps) and
    x's shape (a :class:`MaxPoolCache`, which also keeps the flat winner index
    below once computed).

    When the windows tile the input exactly (stride = kernel, no padding,
    h = ho·kh, w = wo·kw: the usual 2/2 pool) every input position lies in
    one window, so the winners' flat input positions
    ``i* = ((n·C + c)·h + kh·i + a)·w + kw·j + b`` (k* = a·kw + b; in C
    order, or with the element strides of a transposed but dense input) are
    unique: the R-op is one gather ``dy = dx.flat[i*]`` and the backward one
    scatter ``dx = 0;  dx.flat[i*] = dy``.  ``i*`` is computed on first use and
    kept in the cache (a Gauss-Newton solve reuses it in every product).  A
    ReLU just before such a pool fuses with it in :class:`Sequential`
    (:meth:`rop_after_relu`, :meth:`backward_before_relu`).
    """

    def forward(self, p, x, train, state=None):
        if self.kernel == (2, 2) and self._tiles(x.shape):
            y, argmax = self._forward_2x2(x)
            return y, MaxPoolCache((argmax, x.shape))
        xp = get_array_module(x)
        xpad = pad(x, self.padding, value=-float("inf"))
        taps = self._windows(x.shape)
        _, _, _, index = next(taps)
        y = xpad[index].copy()
        argmax = xp.zeros(y.shape, dtype=xp.uint8 if self.kernel[0] * self.kernel[1] <= 256 else xp.int32)
        for k, _, _, index in taps:
            tap = xpad[index]
            better = tap > y                 # strict: the first maximal tap wins ties
            xp.maximum(y, tap, out=y)
            xp.copyto(argmax, argmax.dtype.type(k), where=better)
        return y, MaxPoolCache((argmax, x.shape))

    def _winners(self, cache, strides):
        """Flat positions ``i*`` (int64, (n·C·ho·wo,), output in C order) of the
        windows' winners in an input laid out with element ``strides``
        (s_n, s_c, s_h, s_w): ``n s_n + c s_c + (kh i + a) s_h + (kw j + b) s_w``
        for k* = a·kw + b (tiling pools only); computed once per cache and layout."""
        if cache.winners is None:
            cache.winners = {}
        if strides not in cache.winners:
            argmax, x_shape = cache
            xp = get_array_module(argmax)
            n, c, _, _ = x_shape
            s_n, s_c, s_h, s_w = strides
            (kh, kw), (ho, wo) = self.kernel, self._out_hw(x_shape)
            offsets = xp.asarray([a * s_h + b * s_w for a in range(kh) for b in range(kw)],
                                 dtype=xp.int64)
            index = xp.take(offsets, argmax)                      # of k* = a·kw + b
            index += (xp.arange(n, dtype=xp.int64)[:, None] * s_n
                      + xp.arange(c, dtype=xp.int64)[None, :] * s_c)[:, :, None, None]
            index += (xp.arange(ho, dtype=xp.int64)[:, None] * (kh * s_h)
                      + xp.arange(wo, dtype=xp.int64)[None, :] * (kw * s_w))
            cache.winners[strides] = index.reshape(-1)
        return cache.winners[strides]

    def _relu_mask(self, cache, relu_out):
        """``[relu_out.flat[i*] > 0]`` (dtype of ``relu_out``, output C order), once per cache."""
        if cache.relu_mask is None:
            xp = get_array_module(relu_out)
            flat, strides = _flat(relu_out)
            cache.relu_mask = (xp.take(flat, self._winners(cache, strides)) > 0).astype(relu_out.dtype)
        return cache.relu_mask

    def rop_after_relu(self, cache, relu_out, dx):
        """R-op of ReLU then this (tiling) pool, given the ReLU's cache ``relu_out``:
        ``dy = dx.flat[i*] ⊙ [relu_out.flat[i*] > 0]`` -- the ReLU's mask is
        needed only at the winners (:class:`~hfmeta.layers.container.Sequential`
        fuses the pair)."""
        xp = get_array_module(dx)
        flat, strides = _flat(dx)
        dy = xp.take(flat, self._winners(cache, strides))
        dy *= self._relu_mask(cache, relu_out)
        return dy.reshape(cache[0].shape)

    def backward_before_relu(self, cache, relu_out, dy):
        """Backward through this (tiling) pool and the ReLU before it: the ReLU's
        input cotangent ``dx = 0;  dx.flat[i*] = dy ⊙ [relu_out.flat[i*] > 0]``,
        laid out like ``relu_out`` (an im2col convolution before it then reads
        its (o, n·L) matrix without a copy)."""
        xp = get_array_module(dy)
        dx = xp.zeros_like(relu_out)
        if _dense_view(dx) is None:
            dx = xp.zeros(relu_out.shape, dtype=relu_out.dtype)
        return self._scatter(cache, dy.reshape(-1) * self._relu_mask(cache, relu_out), dx)

    def _scatter(self, cache, values, dx):
        """``dx.flat[i*] = values`` on a zero, dense ``dx`` (tiling pools); returns ``dx``."""
        flat, strides = _dense_view(dx)
        flat[self._winners(cache, strides)] = values
        return dx

    def slice_cache(self, cache, size):
        argmax, x_shape = cache
        sliced = MaxPoolCache((argmax[:size], (size,) + tuple(x_shape[1:])))
        per_example = argmax[0].size             # C order: the first size·c·ho·wo entries
        c_order = (x_shape[1] * x_shape[2] * x_shape[3], x_shape[2] * x_shape[3], x_shape[3], 1)
        if cache.winners is not None and c_order in cache.winners:
            sliced.winners = {c_order: cache.winners[c_order][:size * per_example]}
        if cache.relu_mask is not None:
            sliced.relu_mask = cache.relu_mask[:size * per_example]
        return sliced

    @staticmethod
    def _forward_2x2(x):
        """``(y, k*)`` of the tiling 2×2 pool in two halving passes: the max of each
        column pair (strided), then of each row pair (contiguous rows).  Columns
        first, then rows with a strict comparison keeps the rule of the general
        loop: the first maximal tap in the order k = 2a + b wins ties."""
        xp = get_array_module(x)
        left, right = x[..., 0::2], x[..., 1::2]
        right_won = right > left                             # b of each row's winner
        m = xp.maximum(left, right)                          # (n, c, h, wo)
        top, bottom = m[..., 0::2, :], m[..., 1::2, :]
        bottom_won = bottom > top                            # a of the winner
        y = xp.maximum(top, bottom)
        b_top = right_won[..., 0::2, :].astype(xp.uint8)
        b_bottom = right_won[..., 1::2, :].astype(xp.uint8)
        b_bottom += 2
        return y, xp.where(bottom_won, b_bottom, b_top)

    def _tiles(self, x_shape):
        """True when the windows partition the input (every position in exactly one window)."""
        ho, wo = self._out_hw(x_shape)
        return (self.stride == self.kernel and self.padding == (0, 0)
                and x_shape[2] == ho * self.kernel[0] and x_shape[3] == wo * self.kernel[1])

    def rop(self, p, cache, dp, dx):
        if dx is None:
            return None
        xp = get_array_module(dx)
        argmax, x_shape = cache
        if self._tiles(x_shape):                         # dy = dx.flat[i*]
            flat, strides = _flat(dx)
            return xp.take(flat, self._winners(cache, strides)).reshape(argmax.shape)
        dxpad = pad(dx, self.padding)
        dy = None
        for k, _, _, index in self._windows(x_shape):    # dy = Σ_k [k* = k] dx_k
            dy = accumulate(dy, dxpad[index] * (argmax == k))
        return dy

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        if not need_dx:
            return None
        xp = get_array_module(dy)
        argmax, x_shape = cache
        if self._tiles(x_shape):                         # dx = 0;  dx.flat[i*] = dy
            return self._scatter(cache, dy.reshape(-1), xp.zeros(x_shape, dtype=dy.dtype))
        dxpad = self._padded_zeros(dy, x_shape)
        for k, _, _, index in self._windows(x_shape):
            dxpad[index] += dy * (argmax == k)
        return unpad(dxpad, self.padding)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        # the mask is 0/1, so routing d2y is routing with the squared mask
        return self.backward(p, cache, d2y, d2p_out, need_dx)


class AvgPool2d(_Pool2d):
    """Mean over each window, zero padding included in the count; the cache is x's shape."""

    def _pool(self, x, scale):
        xpad = pad(x, self.padding)
        taps = self._windows(x.shape)
        y = xpad[next(taps)[3]].copy()
        for _, _, _, index in taps:
            y += xpad[index]
        y *= scale
        return y

    def _spread(self, dy, x_shape, scale):
        dxpad = self._padded_zeros(dy, x_shape)
        g = dy * scale
        for _, _, _, index in self._windows(x_shape):
            dxpad[index] += g
        return unpad(dxpad, self.padding)

    def _scale(self):
        return 1.0 / (self.kernel[0] * self.kernel[1])

    def forward(self, p, x, train, state=None):
        return self._pool(x, self._scale()), x.shape

    def slice_cache(self, cache, size):
        return (size,) + tuple(cache[1:])        # x's shape

    def rop(self, p, cache, dp, dx):
        return None if dx is None else self._pool(dx, self._scale())

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        return self._spread(dy, cache, self._scale()) if need_dx else None

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        return self._spread(d2y, cache, self._scale() ** 2) if need_dx else None


class GlobalAvgPool(Layer):
    """(n, c, h, w) -> (n, c), the mean over all positions; the cache is x's shape."""

    def output_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"GlobalAvgPool needs inputs (c, h, w), got {in_shape}")
        return (in_shape[0],)

    def _spread(self, dy, x_shape, scale):
        xp = get_array_module(dy)
        dx = xp.empty(x_shape, dtype=dy.dtype)
        dx[...] = (dy * scale)[:, :, None, None]
        return dx

    def forward(self, p, x, train, state=None):
        return x.mean(axis=(2, 3)), x.shape

    def slice_cache(self, cache, size):
        return (size,) + tuple(cache[1:])        # x's shape

    def rop(self, p, cache, dp, dx):
        return None if dx is None else dx.mean(axis=(2, 3))

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        return self._spread(dy, cache, 1.0 / (cache[2] * cache[3])) if need_dx else None

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        return self.backward(p, cache, ddy, ddp_out, need_dx)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        return self._spread(d2y, cache, 1.0 / (cache[2] * cache[3]) ** 2) if need_dx else None
