"""im2col / col2im: the windows of a 2-d convolution as one matrix (NumPy and CuPy).

Notation: input ``x`` of shape (n, c, h, w), kernel (kh, kw), stride (sh, sw),
zero padding (ph, pw); output size ``ho = (h + 2ph − kh) // sh + 1`` (``wo``
likewise); ``K = c·kh·kw`` rows (one per kernel tap, in the order of a PyTorch
weight ``(o, c, kh, kw)``), ``L = ho·wo`` output positions per example.

Column layout: ``cols`` has shape (K, n·L), i.e. axes (c, kh, kw, n, ho, wo)::

    cols[(c, a, b), (n, u, v)] = xpad[n, c, sh·u + a, sw·v + b]

With W as a matrix (o, K) every product of a convolution is then *one* large
BLAS call, and the columns -- by far the largest array, K·n·L -- are never
copied or transposed:

* forward             Y  = W @ cols              (o, K)·(K, n·L) -> (o, n·L)
* weight gradient     dW = dY @ colsᵀ            contracts the contiguous axis n·L
* input gradient      dcols = Wᵀ @ dY,  dx = col2im(dcols)

Only the output-sized arrays (o, n·L) change axis order: ``Y`` is handed on as
the NCHW *view* ``Y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)`` (elementwise
layers such as ReLU keep that memory order), and ``dy`` is brought back to
(o, n·L) once per backward (one output-sized copy; free when ``dy`` already
has that memory order, e.g. an R-op output).  The
alternatives cost more: (n, K, L) turns the forward into n small matrix
products and the weight gradient into either a copy of the columns or an
(n, o, K) intermediate; (n·L, K) ("im2row") yields NHWC outputs that must be
transposed on every call.

im2col makes one contiguous copy of a strided (c, kh, kw, n, ho, wo) view of
the padded input; col2im loops over the kh·kw kernel offsets (a, b) only and
*adds* one strided slice per offset, so overlapping windows accumulate without
any scatter-add (``add.at``).  The padded input is laid out (c, n, hp, wp),
the axis order of the columns, so the copies run over runs of wo.  For the
``convnet`` layers these copies cost about a third of the forward; the GEMMs
the rest.

Reference: Chellapilla, Puri & Simard (2006), "High performance convolutional
neural networks for document processing" (convolution as unfolding + GEMM).
"""
from __future__ import annotations

from ..backend import get_array_module


def pair(v) -> tuple:
    """``3 -> (3, 3)``; a pair is returned as a tuple of two ints."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def output_size(h, w, kernel, stride, padding) -> tuple:
    """``(ho, wo)`` of a window of size ``kernel`` slid with ``stride`` over the padded (h, w)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kernel} with padding {padding} does not fit an input of {h}x{w}")
    return ho, wo


def windows(kernel, stride, out_hw):
    """Yield ``(k, a, b, index)`` for each kernel offset (a, b), k = a·kw + b.

    ``xpad[index]`` (an index over the last two axes) is the (…, ho, wo) array
    of the padded input seen by tap (a, b) at every output position.
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    for a in range(kh):
        for b in range(kw):
            yield (a * kw + b, a, b,
                   (Ellipsis, slice(a, a + sh * (ho - 1) + 1, sh), slice(b, b + sw * (wo - 1) + 1, sw)))


def pad(x, padding, value=0.0):
    """``x`` (…, h, w) surrounded by ``padding`` = (ph, pw) entries of ``value`` (no copy if zero)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    *lead, h, w = x.shape
    out = xp.full((*lead, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[..., ph:ph + h, pw:pw + w] = x
    return out


def unpad(x, padding):
    """The inverse crop of :func:`pad` (a view)."""
    ph, pw = padding
    h, w = x.shape[-2] - 2 * ph, x.shape[-1] - 2 * pw
    return x[..., ph:ph + h, pw:pw + w]


def im2col(x, kernel, stride=(1, 1), padding=(0, 0)):
    """Unfold ``x`` (n, c, h, w) into ``cols`` (c·kh·kw, n·ho·wo), layout above.

    ``cols[c, a, b, n, i, j] = xpad[c, n, sh·i + a, sw·j + b]`` is a strided view of
    the padded input (no copy), made contiguous in one pass: one kernel on the GPU
    rather than one per tap (kh·kw; H200, conv1 of convnet: 0.37 → 0.11 ms), as
    fast as the per-tap copies on the CPU.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = output_size(h, w, kernel, stride, padding)
    xpad = pad(x.transpose(1, 0, 2, 3), padding)             # (c, n, hp, wp)
    s_c, s_n, s_h, s_w = xpad.strides
    taps = xp.lib.stride_tricks.as_strided(
        xpad, shape=(c, kh, kw, n, ho, wo), strides=(s_c, s_h, s_w, s_n, sh * s_h, sw * s_w))
    return xp.ascontiguousarray(taps).reshape(c * kh * kw, -1)


def col2im(cols, x_shape, kernel, stride=(1, 1), padding=(0, 0)):
    """Adjoint of :func:`im2col`: fold ``cols`` (c·kh·kw, n·ho·wo) back onto (n, c, h, w).

    Every entry of ``cols`` is added to the input position it was copied
    from; padding positions are dropped.  Returns an NCHW view of a
    (c, n, hp, wp) buffer.
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    (kh, kw), (ph, pw) = kernel, padding
    out_hw = output_size(h, w, kernel, stride, padding)
    cols = cols.reshape((c, kh, kw, n) + out_hw)
    xpad = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for _, a, b, index in windows(kernel, stride, out_hw):
        xpad[index] += cols[:, a, b]
    return unpad(xpad, padding).transpose(1, 0, 2, 3)
