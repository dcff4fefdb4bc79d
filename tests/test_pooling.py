"""hfmeta.layers.pooling — MaxPool2d, AvgPool2d, GlobalAvgPool: finite-difference checks (float64) and naive references."""
import numpy as np
import pytest

from hfmeta import backend, gradcheck
from hfmeta.layers import AvgPool2d, GlobalAvgPool, MaxPool2d

IN_SHAPE = (3, 7, 7)
WINDOWED = [(k, s, pd) for k in (2, 3) for s in (1, 2) for pd in (0, 1)]  # kernel, stride, padding


def all_pools():
    return ([MaxPool2d(k, s, pd) for k, s, pd in WINDOWED] + [MaxPool2d(2)]
            + [AvgPool2d(k, s, pd) for k, s, pd in WINDOWED] + [AvgPool2d(3)] + [GlobalAvgPool()])


@pytest.mark.parametrize("layer", all_pools(), ids=repr)
def test_pool_derivatives(layer):
    results = gradcheck.check_map(repr(layer), *gradcheck.layer_map(layer, IN_SHAPE, batch=2))
    results.append(gradcheck.check_backward_rop(repr(layer), layer, IN_SHAPE, batch=2))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8


def naive_windows(x, k, s, pd, fill):
    """Yield (u, v, window (n, c, k, k), rows, cols in the padded frame) one output pixel at a time."""
    xpad = np.pad(x, ((0, 0), (0, 0), (pd, pd), (pd, pd)), constant_values=fill)
    ho, wo = (x.shape[2] + 2 * pd - k) // s + 1, (x.shape[3] + 2 * pd - k) // s + 1
    for u in range(ho):
        for v in range(wo):
            rows, cols = slice(u * s, u * s + k), slice(v * s, v * s + k)
            yield u, v, xpad[:, :, rows, cols], rows, cols


@pytest.mark.parametrize("k,s,pd", WINDOWED, ids=str)
def test_forward_and_diag_match_naive_loops(k, s, pd):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2,) + IN_SHAPE)
    n, c, h, w = x.shape
    for layer, fill in [(MaxPool2d(k, s, pd), -np.inf), (AvgPool2d(k, s, pd), 0.0)]:
        layer.build(IN_SHAPE)
        y, cache = layer.forward({}, x, True)
        assert y.shape == (n,) + layer.out_shape
        d2y = rng.random(y.shape)
        ref_y = np.empty_like(y)
        ref_d2x = np.zeros((n, c, h + 2 * pd, w + 2 * pd))
        for u, v, win, rows, cols in naive_windows(x, k, s, pd, fill):
            if isinstance(layer, MaxPool2d):
                ref_y[:, :, u, v] = win.max(axis=(2, 3))
                hit = win == ref_y[:, :, u, v][:, :, None, None]
                ref_d2x[:, :, rows, cols] += hit * d2y[:, :, u, v][:, :, None, None]
            else:
                ref_y[:, :, u, v] = win.mean(axis=(2, 3))
                ref_d2x[:, :, rows, cols] += d2y[:, :, u, v][:, :, None, None] / (k * k) ** 2
        np.testing.assert_allclose(y, ref_y, rtol=1e-13)
        d2x = layer.backward_diag({}, cache, d2y, {})
        np.testing.assert_allclose(d2x, ref_d2x[:, :, pd:pd + h, pd:pd + w], rtol=1e-13, atol=1e-15)


def test_maxpool_routes_ties_to_one_input():
    layer = MaxPool2d(2)
    layer.build((1, 2, 2))
    x = np.ones((1, 1, 2, 2))
    y, cache = layer.forward({}, x, True)
    dx = layer.backward({}, cache, np.ones_like(y), {})
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0
    np.testing.assert_array_equal(layer.rop({}, cache, None, np.arange(4.0).reshape(x.shape)), [[[[0.0]]]])
    assert layer.rop({}, cache, None, None) is None
    assert layer.backward({}, cache, y, {}, need_dx=False) is None


@pytest.mark.parametrize("in_hw", [(4, 6), (5, 6)], ids=str)
def test_maxpool_winner_is_the_first_maximal_tap(in_hw):
    """The tiling 2x2 pass ((4, 6)) and the general loop ((5, 6)) pick the same
    winner, the first maximum in the order k = 2a + b, on inputs full of ties."""
    layer = MaxPool2d(2)
    layer.build((3,) + in_hw)
    x = np.random.default_rng(4).integers(0, 3, (2, 3) + in_hw).astype(float)
    y, (argmax, _) = layer.forward({}, x, True)
    ho, wo = in_hw[0] // 2, in_hw[1] // 2
    windows = x[:, :, :2 * ho, :2 * wo].reshape(2, 3, ho, 2, wo, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(2, 3, ho, wo, 4)
    np.testing.assert_array_equal(argmax, windows.argmax(axis=-1))
    np.testing.assert_array_equal(y, windows.max(axis=-1))


def test_global_avg_pool_shapes_and_diag():
    layer = GlobalAvgPool()
    assert layer.build((3, 4, 5)) == (3,)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y, cache = layer.forward({}, x, True)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)))
    d2y = np.arange(6.0).reshape(2, 3)
    d2x = layer.backward_diag({}, cache, d2y, {})
    np.testing.assert_allclose(d2x, np.broadcast_to(d2y[:, :, None, None] / 400.0, x.shape))


def test_padding_larger_than_half_the_kernel_is_rejected():
    with pytest.raises(ValueError):
        MaxPool2d(2, padding=2)


@pytest.mark.parametrize("layer", [MaxPool2d(3, 2, 1), AvgPool2d(3, 1, 1), GlobalAvgPool()], ids=repr)
def test_cupy_matches_numpy(gpu, layer):
    cp = backend.xp_for("gpu")
    layer.build(IN_SHAPE)
    rng = np.random.default_rng(4)
    x, dx = rng.standard_normal((2, 2) + IN_SHAPE)
    dy = rng.standard_normal((2,) + layer.out_shape)

    def run(xp):
        y, cache = layer.forward({}, xp.asarray(x), True)
        res = [y, layer.rop({}, cache, None, xp.asarray(dx)),
               layer.backward({}, cache, xp.asarray(dy), {}),
               layer.backward_rop({}, cache, None, None, None, xp.asarray(dy), {}),
               layer.backward_diag({}, cache, xp.asarray(dy) ** 2, {})]
        return [backend.asnumpy(r) for r in res]

    for a, b in zip(run(cp), run(np)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k,in_hw", [(2, (6, 8)), (3, (6, 9))], ids=str)
def test_tiling_maxpool_gather_scatter_match_tap_loops(k, in_hw):
    """Tiling pools (the 2x2 halving forward and the general loop for 3x3) route
    R-op and backward through the flat winner index: exactly the tap loops'
    results, the index computed once per cache; derivatives pass finite differences."""
    from hfmeta.layers.im2col import windows
    layer = MaxPool2d(k)
    layer.build((3,) + in_hw)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 3) + in_hw).astype(float)          # ties on purpose
    y, cache = layer.forward({}, x, True)
    argmax, _ = cache
    dx, dy = rng.standard_normal(x.shape), rng.standard_normal(y.shape)
    ref_rop, ref_bwd = np.zeros(y.shape), np.zeros(x.shape)
    for kk, _, _, index in windows(layer.kernel, layer.stride, y.shape[2:]):
        ref_rop += dx[index] * (argmax == kk)
        ref_bwd[index] += dy * (argmax == kk)
    np.testing.assert_array_equal(layer.rop({}, cache, None, dx), ref_rop)
    (index,) = cache.winners.values()
    np.testing.assert_array_equal(layer.backward({}, cache, dy, {}), ref_bwd)
    (again,) = cache.winners.values()
    assert again is index                                          # computed once
    results = gradcheck.check_map(repr(layer), *gradcheck.layer_map(layer, (3,) + in_hw, batch=2))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8


@pytest.mark.parametrize("pool_k", [2, 3], ids=str)
def test_sequential_fuses_relu_and_tiling_maxpool(pool_k):
    """Sequential runs ReLU -> tiling MaxPool2d as one gather (R-op) and one
    scatter (backward) with the ReLU mask only at the winners: the same numbers
    as the layers one by one, also on the (o, n, h, w)-strided output of an
    im2col convolution and on a sliced sub-batch cache."""
    from hfmeta.layers import Conv2d, Flatten, Linear, ReLU, Sequential
    net = Sequential([("conv", Conv2d(4, 3, padding=1)), ("relu", ReLU()),
                      ("pool", MaxPool2d(pool_k)), ("flatten", Flatten()), ("fc", Linear(3))])
    in_shape = (2, 6, 6)
    net.build(in_shape)
    rng = np.random.default_rng(6)
    p = {f"{name}.{k}": v for name, layer in net.children
         for k, v in layer.init_params(rng).items()}
    x = rng.standard_normal((5,) + in_shape)
    x[:, :, :2] = 0.0                                          # ReLU zeros and winner ties
    z, cache = net.forward(p, x, True)
    assert not cache[1].flags.c_contiguous                     # NCHW view of (o, n, h, w)
    dp = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    dz = rng.standard_normal(z.shape)

    def one_by_one(cache, dp, dz, n):
        dx = None
        for (name, layer), c in zip(net.children, cache):
            dx = layer.rop(net.sub(p, name), c, net.sub(dp, name) or None, dx)
        grads, dy = {k: np.empty_like(v) for k, v in p.items()}, dz
        for (name, layer), c in reversed(list(zip(net.children, cache))):
            dy = layer.backward(net.sub(p, name), c, dy, net.sub(grads, name), True)
        return dx, grads, dy

    for c, n, d in [(cache, 5, dz), (net.slice_cache(cache, 2), 2, dz[:2])]:
        ref_rop, ref_grads, ref_dx = one_by_one(c, dp, d, n)
        np.testing.assert_allclose(net.rop(p, c, dp, None), ref_rop, rtol=1e-14, atol=1e-15)
        grads = {k: np.empty_like(v) for k, v in p.items()}
        dx = net.backward(p, c, d, grads, True)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-14, atol=1e-15)
        for k in p:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-13, atol=1e-15)
