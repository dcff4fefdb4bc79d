"""Conv2d with its three algorithms -- im2col (hfmeta.layers.im2col), the Fourier domain
(hfmeta.layers.spectral) and shifted products (hfmeta.layers.shift) -- : finite-difference
checks (float64) and naive reference loops."""
import numpy as np
import pytest

from hfmeta import backend, gradcheck, models
from hfmeta.layers import Conv2d
from hfmeta.layers import conv as conv_module
from hfmeta.layers.im2col import col2im, im2col

IN_SHAPE = (3, 7, 7)

VARIANTS = [  # (kernel, stride, padding, bias)
    (1, 1, 0, True), (1, 2, 0, False),
    (3, 1, 0, True), (3, 1, 1, False), (3, 2, 1, True), (3, 2, 0, False), (3, 1, 2, True),
    (3, 1, "same", True), (5, 1, "same", False), (5, 1, 2, True), (5, 2, 2, False),
    (5, 1, 0, True), ((3, 1), (2, 1), (1, 0), True),
]


#: the stride-1 variants, which the FFT and shifted-product algorithms also run
FFT_VARIANTS = [v for v in VARIANTS if v[1] == 1]
STRIDE_1_ALGORITHMS = ("fft", "shift")


def make(kernel, stride, padding, bias, out=4, algorithm="im2col"):
    return Conv2d(out, kernel, stride=stride, padding=padding, bias=bias, algorithm=algorithm)


def point(layer, in_shape=IN_SHAPE, batch=2, seed=0):
    x, p, _ = gradcheck.random_point(layer, in_shape, batch, seed)
    return x, p


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_conv_derivatives(variant):
    check_derivatives(make(*variant))


@pytest.mark.parametrize("algorithm", STRIDE_1_ALGORITHMS)
@pytest.mark.parametrize("variant", FFT_VARIANTS, ids=str)
def test_stride_1_algorithms_derivatives(variant, algorithm):
    check_derivatives(make(*variant, algorithm=algorithm))


def check_derivatives(layer):
    results = gradcheck.check_map(repr(layer), *gradcheck.layer_map(layer, IN_SHAPE, batch=2))
    results.append(gradcheck.check_backward_rop(repr(layer), layer, IN_SHAPE, batch=2))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8


def naive_conv(x, w, b, stride, padding):
    """y[n,o,u,v] = b[o] + Σ_{c,a,b} w[o,c,a,b] xpad[n,c,s u+a, s v+b], one output pixel at a time."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for u in range(ho):
        for v in range(wo):
            patch = xpad[:, :, u * sh:u * sh + kh, v * sw:v * sw + kw]
            for k in range(n):
                for m in range(o):
                    y[k, m, u, v] = (patch[k] * w[m]).sum() + (b[m] if b is not None else 0.0)
    return y, xpad


@pytest.mark.parametrize("variant,algorithm", [(v, "im2col") for v in VARIANTS]
                         + [(v, a) for v in FFT_VARIANTS for a in STRIDE_1_ALGORITHMS], ids=str)
def test_conv_forward_matches_naive_loop(variant, algorithm):
    layer = make(*variant, algorithm=algorithm)
    x, p = point(layer)
    y, _ = layer.forward(p, x, True)
    ref, _ = naive_conv(x, p["weight"], p.get("bias"), layer.stride, layer.padding)
    assert y.shape == ref.shape == (2,) + layer.out_shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_same_padding_keeps_size_and_rejects_bad_configs():
    assert make(5, 1, "same", True).build((3, 6, 8)) == (4, 6, 8)
    with pytest.raises(ValueError):
        Conv2d(4, 4, padding="same")
    with pytest.raises(ValueError):
        Conv2d(4, 3, stride=2, padding="same")
    with pytest.raises(ValueError):
        Conv2d(4, 5).build((3, 4, 4))
    with pytest.raises(ValueError):
        Conv2d(4, 3, stride=2, algorithm="fft")
    with pytest.raises(ValueError):
        Conv2d(4, 3, stride=2, algorithm="shift")
    with pytest.raises(ValueError):
        Conv2d(4, 3, algorithm="winograd")
    strided = Conv2d(4, 3, stride=2)
    strided.build((3, 7, 7))
    with pytest.raises(ValueError):                 # set_algorithm checks as the constructor
        strided.set_algorithm("shift", "cpu")


def test_auto_algorithm_on_the_cpu():
    """The FFT for large stride-1 kernels on many channels, shifted products for
    small ones on 8 to 32 channels and 16×16 outputs, im2col for the rest."""
    def auto(layer, in_shape):
        layer.build(in_shape)
        return layer.chosen_algorithm
    assert auto(Conv2d(64, 5, padding="same"), (64, 16, 16)) == "fft"
    assert auto(Conv2d(64, 5, padding="same"), (3, 32, 32)) == "im2col"    # few channels
    assert auto(Conv2d(16, 3, padding=1), (16, 32, 32)) == "shift"         # resnet-mini stage 1
    assert auto(Conv2d(32, 3, padding=1), (32, 16, 16)) == "shift"         # stage 2
    assert auto(Conv2d(64, 3, padding=1), (64, 8, 8)) == "im2col"          # stage 3: small images
    assert auto(Conv2d(64, 3, padding=1), (64, 32, 32)) == "im2col"        # many channels
    assert auto(Conv2d(16, 3, padding=1), (3, 32, 32)) == "im2col"         # the stem: 3 channels
    assert auto(Conv2d(16, 1), (16, 32, 32)) == "im2col"                   # 1×1
    assert auto(Conv2d(64, 5, stride=2, padding=2), (64, 16, 16)) == "im2col"
    assert auto(Conv2d(32, 3, stride=2, padding=1), (16, 32, 32)) == "im2col"


def test_auto_algorithm_is_im2col_on_the_gpu(gpu):
    """On the GPU "auto" means im2col (launch-bound there); an explicit "fft" stays,
    and a Model places its layers on its device."""
    auto, fft = Conv2d(64, 5, padding="same"), Conv2d(64, 5, padding="same", algorithm="fft")
    for layer in (auto, fft):
        layer.build((64, 16, 16))
        layer.place("gpu")
    assert auto.chosen_algorithm == "im2col" and fft.chosen_algorithm == "fft"
    auto.place("cpu")
    assert auto.chosen_algorithm == "fft"
    small = Conv2d(16, 3, padding=1)
    small.build((16, 32, 32))
    small.place("gpu")
    assert small.chosen_algorithm == "im2col"
    for device, uses_fft in (("cpu", True), ("gpu", False)):
        conv2 = dict(models.build("convnet", (3, 32, 32), 10, device=device).net.leaves())["conv2"]
        assert (conv2.chosen_algorithm == "fft") == uses_fft, device


@pytest.mark.parametrize("algorithm", STRIDE_1_ALGORITHMS)
@pytest.mark.parametrize("variant", FFT_VARIANTS, ids=str)
def test_stride_1_algorithms_and_im2col_agree_on_every_pass(variant, algorithm):
    """Every algorithm computes the same linear algebra (float64: to rounding)."""
    ref, other = make(*variant), make(*variant, algorithm=algorithm)
    x, p = point(ref)
    other.build(IN_SHAPE)
    rng = np.random.default_rng(11)
    dx = rng.standard_normal(x.shape)
    dp = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    (ya, ca), (yb, cb) = ref.forward(p, x, True), other.forward(p, x, True)
    dy, ddy = rng.standard_normal(ya.shape), rng.standard_normal(ya.shape)
    pairs = [(ya, yb)]
    for d_p, d_x in ((dp, dx), (dp, None), (None, dx)):
        pairs.append((ref.rop(p, ca, d_p, d_x), other.rop(p, cb, d_p, d_x)))
    for method, args in (("backward", (dy,)), ("backward_rop", (dy, dp, dx, ddy)),
                         ("backward_rop", (dy, None, None, ddy)), ("backward_diag", (ddy ** 2,))):
        ga = {k: np.empty_like(v) for k, v in p.items()}
        gb = {k: np.empty_like(v) for k, v in p.items()}
        pairs.append((getattr(ref, method)(p, ca, *args, ga),
                      getattr(other, method)(p, cb, *args, gb)))
        pairs += [(ga[k], gb[k]) for k in ga]
    for a, b in pairs:
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("in_hw,padding", [((7, 7), (1, 1)), ((7, 6), (0, 2)), ((6, 7), (2, 0)),
                                             ((1, 7), (0, 1)), ((2, 2), (0, 0))])
def test_spectral_product_fills_the_hermitian_bins_it_skips(in_hw, padding):
    """``SpectralPlan.product`` multiplies only the bins that the Hermitian symmetry
    of real signals leaves independent; it equals the product of every bin
    (odd and even grids, plain, conjugated and transposed factors)."""
    from hfmeta.layers.spectral import SpectralPlan, conj_t
    plan = SpectralPlan(in_hw, (3, 3), padding)
    rng = np.random.default_rng(5)
    a = plan.signal(rng.standard_normal((4, 3) + in_hw))                 # (B, 4, 3)
    b = plan.signal(rng.standard_normal((2, 3) + in_hw))                 # (B, 2, 3)
    c = plan.signal(rng.standard_normal((4, 2) + in_hw))                 # (B, 4, 2)
    for lhs, rhs in ((a, conj_t(b)), (conj_t(c), a), (c, b)):
        np.testing.assert_allclose(plan.product(lhs, rhs), lhs @ rhs, rtol=1e-12, atol=1e-12)


def test_im2col_and_col2im_are_adjoint():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    for kernel, stride, padding in [((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 1), (0, 1)), ((3, 3), (3, 3), (0, 0))]:
        cols = im2col(x, kernel, stride, padding)
        c = rng.standard_normal(cols.shape)
        lhs = (cols * c).sum()
        rhs = (x * col2im(c, x.shape, kernel, stride, padding)).sum()
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("variant", [(3, 1, 1, True), (5, 2, 2, True), (1, 1, 0, False),
                                     (5, 1, 2, True, 4, "fft"), (3, 1, 2, True, 4, "shift")],
                         ids=str)
def test_sq_grad_matches_per_example_backward(variant):
    layer = make(*variant)
    x, p = point(layer, batch=3)
    y, cache = layer.forward(p, x, True)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    sq = {name: np.full(shape, 0.5) for name, shape, _ in layer.param_specs()}  # sq_grad adds
    layer.sq_grad(p, cache, dy, sq)
    ref = {name: np.full(shape, 0.5) for name, shape, _ in layer.param_specs()}
    for k in range(3):
        _, cache_k = layer.forward(p, x[k:k + 1], True)
        g = {name: np.empty(shape) for name, shape, _ in layer.param_specs()}
        layer.backward(p, cache_k, dy[k:k + 1], g, need_dx=False)
        for name in ref:
            ref[name] += g[name] ** 2
    for name in ref:
        np.testing.assert_allclose(sq[name], ref[name], rtol=1e-12)


@pytest.mark.parametrize("variant", [(3, 1, 1, True), (3, 2, 0, True), (5, 2, 2, False),
                                     (5, 1, "same", False, 4, "fft"),
                                     (3, 1, 0, True, 4, "shift")], ids=str)
def test_backward_diag_matches_naive_formula(variant):
    """Becker–LeCun: d2W = Σ d2y xpad², d2b = Σ d2y, d2x = Σ W² d2y over the windows covering x."""
    layer = make(*variant)
    x, p = point(layer)
    y, cache = layer.forward(p, x, True)
    d2y = np.random.default_rng(6).random(y.shape)
    d2p = {name: np.empty(shape) for name, shape, _ in layer.param_specs()}
    d2x = layer.backward_diag(p, cache, d2y, d2p)

    w = p["weight"]
    o, c, kh, kw = w.shape
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    _, xpad = naive_conv(x, w, None, layer.stride, layer.padding)
    ref_w = np.zeros_like(w)
    ref_xpad = np.zeros_like(xpad)
    for u in range(y.shape[2]):
        for v in range(y.shape[3]):
            rows, cols = slice(u * sh, u * sh + kh), slice(v * sw, v * sw + kw)
            for k in range(x.shape[0]):
                for m in range(o):
                    ref_w[m] += d2y[k, m, u, v] * xpad[k, :, rows, cols] ** 2
                    ref_xpad[k, :, rows, cols] += d2y[k, m, u, v] * w[m] ** 2
    np.testing.assert_allclose(d2p["weight"], ref_w, rtol=1e-12)
    np.testing.assert_allclose(d2x, ref_xpad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]], rtol=1e-12)
    if layer.bias:
        np.testing.assert_allclose(d2p["bias"], d2y.sum(axis=(0, 2, 3)), rtol=1e-12)
    assert layer.backward_diag(p, cache, d2y, d2p, need_dx=False) is None


def test_rop_and_backward_reuse_the_cached_columns(monkeypatch):
    """Only forward and a non-zero input direction are unfolded; parameter parts use the cache."""
    calls = []
    real = conv_module.im2col
    monkeypatch.setattr(conv_module, "im2col", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = make(3, 1, 1, True)
    x, p = point(layer)
    y, cache = layer.forward(p, x, True)
    assert len(calls) == 1
    dp = {k: np.ones_like(v) for k, v in p.items()}
    dy = layer.rop(p, cache, dp, None)
    assert len(calls) == 1 and dy.shape == y.shape
    assert layer.rop(p, cache, None, None) is None
    layer.backward(p, cache, y, {k: np.empty_like(v) for k, v in p.items()}, need_dx=True)
    assert layer.backward(p, cache, y, {k: np.empty_like(v) for k, v in p.items()}, need_dx=False) is None
    layer.backward_rop(p, cache, y, dp, None, y, {k: np.empty_like(v) for k, v in p.items()})
    assert len(calls) == 1
    layer.rop(p, cache, dp, x)
    assert len(calls) == 2


def test_backward_overwrites_the_gradient_views():
    layer = make(3, 1, 1, True)
    x, p = point(layer)
    y, cache = layer.forward(p, x, True)
    dy = np.ones_like(y)
    first = {k: np.empty_like(v) for k, v in p.items()}
    layer.backward(p, cache, dy, first)
    again = {k: v.copy() + 7.0 for k, v in first.items()}
    layer.backward(p, cache, dy, again)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])


@pytest.mark.parametrize("variant", [(3, 1, 1, True), (5, 2, 2, False), (1, 1, 0, True),
                                     (5, 1, "same", True, 4, "fft"), (3, 1, 0, False, 4, "fft"),
                                     (3, 1, 1, True, 4, "shift"), (5, 1, 0, False, 4, "shift")],
                         ids=str)
def test_cupy_matches_numpy(gpu, variant):
    cp = backend.xp_for("gpu")
    layer = make(*variant)
    x, p = point(layer)
    rng = np.random.default_rng(9)
    dx = rng.standard_normal(x.shape)
    dp = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    out_shape = (2,) + layer.out_shape
    dy, ddy = rng.standard_normal(out_shape), rng.standard_normal(out_shape)

    def run(xp):
        to = (lambda a: xp.asarray(a))
        pp, dpp = {k: to(v) for k, v in p.items()}, {k: to(v) for k, v in dp.items()}
        y, cache = layer.forward(pp, to(x), True)
        res = {"y": y, "rop": layer.rop(pp, cache, dpp, to(dx))}
        g = {k: xp.empty_like(v) for k, v in pp.items()}
        res["dx"] = layer.backward(pp, cache, to(dy), g)
        res.update({"g." + k: v for k, v in g.items()})
        gg = {k: xp.empty_like(v) for k, v in pp.items()}
        res["ddx"] = layer.backward_rop(pp, cache, to(dy), dpp, to(dx), to(ddy), gg)
        res.update({"gg." + k: v for k, v in gg.items()})
        d2 = {k: xp.empty_like(v) for k, v in pp.items()}
        res["d2x"] = layer.backward_diag(pp, cache, to(ddy) ** 2, d2)
        res.update({"d2." + k: v for k, v in d2.items()})
        return {k: backend.asnumpy(v) for k, v in res.items()}

    cpu, gpu = run(np), run(cp)
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("variant", [(3, 1, 1, True), (3, 2, 0, False), (5, 1, "same", True),
                                     (1, 2, 0, False)], ids=str)
def test_lean_cache_keeps_the_input_and_gives_the_same_numbers(variant):
    """Under ``lean_caches`` the im2col cache holds x instead of its columns; every
    pass unfolds x again and returns exactly (bit for bit) what the full cache gives."""
    from hfmeta.layers.base import lean_caches
    layer = make(*variant)
    x, p = point(layer)
    y, full = layer.forward(p, x, True)
    with lean_caches():
        y_lean, lean = layer.forward(p, x, True)
    assert full.cols is not None and full.x is None
    assert lean.cols is None and lean.x is x and lean.x_shape == full.x_shape == x.shape
    np.testing.assert_array_equal(y_lean, y)
    rng = np.random.default_rng(12)
    dx = rng.standard_normal(x.shape)
    dp = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    dy, ddy = rng.standard_normal(y.shape), rng.standard_normal(y.shape)
    for d_p, d_x in ((dp, dx), (dp, None), (None, dx)):
        np.testing.assert_array_equal(layer.rop(p, lean, d_p, d_x), layer.rop(p, full, d_p, d_x))
    for method, args in (("backward", (dy,)), ("backward_rop", (dy, dp, dx, ddy)),
                         ("backward_rop", (dy, None, None, ddy)), ("backward_diag", (ddy ** 2,))):
        ga = {k: np.empty_like(v) for k, v in p.items()}
        gb = {k: np.empty_like(v) for k, v in p.items()}
        np.testing.assert_array_equal(getattr(layer, method)(p, lean, *args, ga),
                                      getattr(layer, method)(p, full, *args, gb))
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k])
    sa = {k: np.zeros_like(v) for k, v in p.items()}
    sb = {k: np.zeros_like(v) for k, v in p.items()}
    layer.sq_grad(p, lean, dy, sa)
    layer.sq_grad(p, full, dy, sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
