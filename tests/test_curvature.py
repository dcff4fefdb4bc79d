"""Gauss-Newton and exact Hessian products on tiny nets of every family (float64).

* G v equals Jᵀ H_l J v with J the full finite-difference Jacobian;
* H v equals the central difference of the gradient map;
* for ReLU/max-pool nets H and G agree on each layer's diagonal block (so on the
  diagonal) and differ between layers; with batch norm they differ on the diagonal;
* G is symmetric positive semi-definite.
"""
import numpy as np
import pytest

from hfmeta import curvature
from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.layers import (BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d,
                           PreActBlock, ReLU, Sequential)
from hfmeta.losses import SoftmaxCrossEntropy
from hfmeta.model import Model

CLASSES = 3


def _net(name):
    """Tiny members of each model family: (Sequential, input shape)."""
    if name == "mlp":
        return Sequential([("flatten", Flatten()), ("fc1", Linear(4)), ("relu1", ReLU()),
                           ("fc2", Linear(3)), ("relu2", ReLU()), ("fc3", Linear(CLASSES))]), (1, 3, 3)
    if name == "cnn":
        return Sequential([("conv1", Conv2d(2, 3, padding="same")), ("relu1", ReLU()),
                           ("pool1", MaxPool2d(2, 2)), ("flatten", Flatten()),
                           ("fc1", Linear(CLASSES))]), (1, 4, 4)
    if name == "cnn-bn":
        return Sequential([("conv1", Conv2d(2, 3, padding="same")), ("bn1", BatchNorm()),
                           ("relu1", ReLU()), ("pool1", MaxPool2d(2, 2)), ("flatten", Flatten()),
                           ("fc1", Linear(CLASSES))]), (1, 4, 4)
    if name == "resnet":
        return Sequential([("conv_stem", Conv2d(1, 3, padding=1, bias=False)),
                           ("block1", PreActBlock(1)), ("block2", PreActBlock(2, stride=2)),
                           ("bn_final", BatchNorm()),
                           ("relu_final", ReLU()), ("pool", GlobalAvgPool()),
                           ("fc", Linear(CLASSES))]), (1, 4, 4)
    raise KeyError(name)


FAMILIES = ["mlp", "cnn", "cnn-bn", "resnet"]
NO_BN = ["mlp", "cnn"]


def tiny_problem(name, batch=3, seed=0, train=True):
    """``(model, w, x, y, state)`` at a generic point (weights perturbed off their init)."""
    net, in_shape = _net(name)
    model = Model(net, in_shape, CLASSES, dtype="float64", name=name)
    rng = np.random.default_rng(seed)
    w = model.init(seed) + 0.1 * rng.standard_normal(model.num_params)
    x = rng.standard_normal((batch,) + in_shape)
    y = rng.integers(0, CLASSES, batch)
    state = None
    if not train:
        state = {k: v + (0.3 * rng.random(v.shape) if "var" in k else 0.1 * rng.standard_normal(v.shape))
                 for k, v in model.init_state().items()}
    return model, w, x, y, state


def gradient_map(model, x, y, loss, train=True, state=None):
    """``w -> ∇_w l(f(w, x), y)``: the map whose derivative is the Hessian."""
    def grad(w):
        lin = model.linearize(w, x, train, state)
        return lin.backward(loss.grad(lin.output, y))
    return grad


def unit(v):
    """Unit-length direction: finite-difference steps of length h whatever the size of w
    (long steps cross ReLU kinks behind batch norm)."""
    return v / np.linalg.norm(v)


def dense_G(lin, loss):
    return curvature.dense(lambda v: curvature.gvp(lin, loss, v), lin.w.size, lin.w)


def dense_H(lin, loss, y):
    return curvature.dense(lambda v: curvature.hvp(lin, loss, y, v), lin.w.size, lin.w)


@pytest.mark.parametrize("name", FAMILIES)
def test_ggn_equals_JT_Hl_J_from_finite_difference_jacobian(name):
    model, w, x, y, _ = tiny_problem(name)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    z = lin.output

    def f(v):
        return model.linearize(v, x).output.ravel()

    # h = 1e-5: batch-normalised pre-activations sit close to ReLU kinks on tiny batches
    J = np.stack([central_difference(f, w, e, 1e-5) for e in np.eye(w.size)], axis=1)
    Hl = np.stack([loss.hvp(z, None, u.reshape(z.shape)).ravel() for u in np.eye(z.size)], axis=1)
    err = rel_error(dense_G(lin, loss), J.T @ Hl @ J)
    print(f"{name}: {w.size} params, |G - JᵀH_lJ| / |G| = {err:.1e}")
    assert err < 1e-8


@pytest.mark.parametrize("name", FAMILIES)
def test_hvp_matches_central_difference_of_gradient(name):
    model, w, x, y, _ = tiny_problem(name)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    rng = np.random.default_rng(1)
    grad = gradient_map(model, x, y, loss)
    errs = []
    for _ in range(3):
        v = unit(rng.standard_normal(w.size))
        errs.append(rel_error(curvature.hvp(lin, loss, y, v), central_difference(grad, w, v, 1e-4)))
    print(f"{name}: largest |Hv - FD| / |Hv| = {max(errs):.1e}")
    assert max(errs) < 1e-8


def test_hvp_in_eval_mode_matches_central_difference():
    model, w, x, y, state = tiny_problem("resnet", train=False)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x, False, state)
    v = unit(np.random.default_rng(2).standard_normal(w.size))
    fd = central_difference(gradient_map(model, x, y, loss, False, state), w, v, 1e-4)
    assert rel_error(curvature.hvp(lin, loss, y, v), fd) < 1e-8


@pytest.mark.parametrize("zoo_name,in_shape,options", [
    ("convnet", (3, 8, 8), {"width": 1 / 16}),
    ("resnet-mini", (3, 8, 8), {"width": 0.25}),
])
def test_hvp_on_zoo_models(zoo_name, in_shape, options):
    models = pytest.importorskip("hfmeta.models")
    model = models.build(zoo_name, in_shape, 4, dtype="float64", **options)
    rng = np.random.default_rng(3)
    w = model.init(0) + 0.05 * rng.standard_normal(model.num_params)
    x, y = rng.standard_normal((3,) + in_shape), rng.integers(0, 4, 3)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    v = unit(rng.standard_normal(w.size))
    err = rel_error(curvature.hvp(lin, loss, y, v),
                    central_difference(gradient_map(model, x, y, loss), w, v, 1e-4))
    print(f"{zoo_name}: {w.size} params, |Hv - FD| / |Hv| = {err:.1e}")
    assert err < 1e-8


def _layer_blocks(model):
    """Boolean (N, N) mask of the per-layer diagonal blocks of a flat-vector matrix."""
    owner = np.empty(model.num_params, dtype=object)
    for spec in model.layout.specs:
        owner[spec.slice] = spec.layer
    return owner[:, None] == owner[None, :]


@pytest.mark.parametrize("name", NO_BN)
def test_hessian_and_ggn_share_layer_blocks_without_batch_norm(name):
    """z is piecewise linear in any one layer's parameters: H = G on those blocks only."""
    model, w, x, y, _ = tiny_problem(name)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    H, G = dense_H(lin, loss, y), dense_G(lin, loss)
    same = _layer_blocks(model)
    assert rel_error(H, H.T) < 1e-12
    diag_err = rel_error(np.diag(H), np.diag(G))
    block_err = rel_error(H[same], G[same])
    off = rel_error(H[~same], G[~same])
    print(f"{name}: diag {diag_err:.1e}, layer blocks {block_err:.1e}, between layers {off:.2f}")
    assert diag_err < 1e-12 and block_err < 1e-12
    assert off > 1e-2


def test_batch_norm_makes_hessian_diagonal_differ_from_ggn():
    model, w, x, y, _ = tiny_problem("cnn-bn")
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    err = rel_error(np.diag(dense_H(lin, loss, y)), np.diag(dense_G(lin, loss)))
    print(f"cnn-bn: |diag H - diag G| / |diag H| = {err:.2e}")
    assert err > 1e-3


@pytest.mark.parametrize("name", FAMILIES)
def test_ggn_is_symmetric_positive_semidefinite(name):
    model, w, x, y, _ = tiny_problem(name)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    rng = np.random.default_rng(4)
    for _ in range(5):
        u, v = rng.standard_normal(w.size), rng.standard_normal(w.size)
        Gu, Gv = curvature.gvp(lin, loss, u), curvature.gvp(lin, loss, v)
        assert abs(u @ Gv - Gu @ v) <= 1e-12 * max(abs(u @ Gv), 1e-300)
        assert v @ Gv >= 0
    eig = np.linalg.eigvalsh(dense_G(lin, loss))
    assert eig.min() >= -1e-12 * eig.max()


def test_damping_adds_scalar_or_vector():
    model, w, x, y, _ = tiny_problem("mlp")
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    rng = np.random.default_rng(5)
    v, s = rng.standard_normal(w.size), rng.random(w.size)
    Gv = curvature.gvp(lin, loss, v)
    np.testing.assert_allclose(curvature.gvp(lin, loss, v, 0.5), Gv + 0.5 * v, rtol=1e-14)
    np.testing.assert_allclose(curvature.operator(lin, loss, s)(v), Gv + s * v, rtol=1e-14)
    Hv = curvature.hvp(lin, loss, y, v)
    np.testing.assert_allclose(curvature.operator(lin, loss, s, y, exact=True)(v), Hv + s * v,
                               rtol=1e-14)


@pytest.mark.parametrize("zoo_name,in_shape,options", [
    ("cnn-big", (3, 8, 8), {"channels": (4, 4, 4), "hidden": 8}),
    ("resnet-mini", (3, 8, 8), {"width": 0.25}),
])
def test_lean_caches_give_the_same_products(zoo_name, in_shape, options):
    """A linearization made under ``lean_caches`` (convolutions keep x, not its
    columns) gives bit-for-bit the same gradient, Gv, Hv and diagonal passes."""
    from hfmeta.layers.base import lean_caches
    models = pytest.importorskip("hfmeta.models")
    model = models.build(zoo_name, in_shape, 4, dtype="float64", **options)
    rng = np.random.default_rng(4)
    w = model.init(0) + 0.05 * rng.standard_normal(model.num_params)
    x, y = rng.standard_normal((3,) + in_shape), rng.integers(0, 4, 3)
    loss = SoftmaxCrossEntropy()
    v = rng.standard_normal(w.size)
    full = model.linearize(w, x)
    with lean_caches():
        lean = model.linearize(w, x)
    dz = loss.grad(full.output, y)
    np.testing.assert_array_equal(lean.output, full.output)
    for fn in (lambda lin: lin.backward(dz), lambda lin: curvature.gvp(lin, loss, v, 1e-3),
               lambda lin: curvature.hvp(lin, loss, y, v), lambda lin: lin.backward_diag(dz ** 2)):
        np.testing.assert_array_equal(fn(lean), fn(full))
