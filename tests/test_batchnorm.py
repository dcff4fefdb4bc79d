"""BatchNorm: finite-difference checks through the batch statistics, running state, hooks."""
import numpy as np
import pytest

from hfmeta import backend, gradcheck
from hfmeta.layers import BatchNorm

# fc inputs need a batch > 2: with two examples x̂ = ±1 whatever x is
SHAPES = [((4,), 5), ((3, 4, 4), 2)]
MODES = [True, False]


@pytest.mark.parametrize("in_shape,batch", SHAPES)
@pytest.mark.parametrize("train", MODES)
def test_derivatives(in_shape, batch, train):
    layer = BatchNorm()
    name = f"bn {in_shape} train={train}"
    results = gradcheck.check_map(name, *gradcheck.layer_map(layer, in_shape, batch, train))
    results.append(gradcheck.check_backward_rop(name, layer, in_shape, batch, train))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8, gradcheck.format_table(results)


@pytest.mark.parametrize("in_shape,batch", SHAPES)
def test_train_forward_normalises_each_channel(in_shape, batch):
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, in_shape, batch)
    x = 3.0 * x + 1.5
    _, cache = layer.forward(p, x, True, state)
    xhat = np.moveaxis(cache.xhat, 1, 0).reshape(in_shape[0], -1)
    np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-12)
    var = np.moveaxis(x, 1, 0).reshape(in_shape[0], -1).var(axis=1)
    np.testing.assert_allclose(xhat.var(axis=1), var / (var + layer.eps), rtol=1e-12)


@pytest.mark.parametrize("in_shape,batch", SHAPES)
def test_new_state_is_pytorch_running_average(in_shape, batch):
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, in_shape, batch)
    _, cache = layer.forward(p, x, True, state)
    xc = np.moveaxis(x, 1, 0).reshape(in_shape[0], -1)
    m = 0.1
    new = layer.new_state(state, cache, m)
    np.testing.assert_allclose(new["running_mean"],
                               (1 - m) * state["running_mean"] + m * xc.mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(new["running_var"],
                               (1 - m) * state["running_var"] + m * xc.var(axis=1, ddof=1),
                               rtol=1e-13)
    _, eval_cache = layer.forward(p, x, False, state)
    assert layer.new_state(state, eval_cache, m) is state


@pytest.mark.parametrize("in_shape,batch", SHAPES)
def test_sq_grad_eval_is_sum_of_squared_per_example_gradients(in_shape, batch):
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, in_shape, batch)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    _, cache = layer.forward(p, x, False, state)
    sq = {"gamma": np.full(in_shape[0], 0.5), "beta": np.full(in_shape[0], 0.5)}  # += semantics
    layer.sq_grad(p, cache, dy, sq)
    want = {"gamma": np.full(in_shape[0], 0.5), "beta": np.full(in_shape[0], 0.5)}
    for i in range(batch):
        _, ci = layer.forward(p, x[i:i + 1], False, state)
        g = {"gamma": np.empty(in_shape[0]), "beta": np.empty(in_shape[0])}
        layer.backward(p, ci, dy[i:i + 1], g, False)
        for k in want:
            want[k] += g[k] ** 2
    for k in want:
        np.testing.assert_allclose(sq[k], want[k], rtol=1e-12)


def test_sq_grad_train_raises():
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, (3, 2, 2), 2)
    _, cache = layer.forward(p, x, True, state)
    sq = {"gamma": np.zeros(3), "beta": np.zeros(3)}
    with pytest.raises(NotImplementedError):
        layer.sq_grad(p, cache, np.ones_like(x), sq)


@pytest.mark.parametrize("train", MODES)
def test_backward_diag_holds_statistics_constant(train):
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, (3, 2, 2), 4)
    _, cache = layer.forward(p, x, train, state)
    d2y = np.random.default_rng(5).random(x.shape)
    d2p = {"gamma": np.empty(3), "beta": np.empty(3)}
    d2x = layer.backward_diag(p, cache, d2y, d2p)
    mean = x.mean(axis=(0, 2, 3)) if train else state["running_mean"]
    var = x.var(axis=(0, 2, 3)) if train else state["running_var"]
    scale = (p["gamma"] / np.sqrt(var + layer.eps))[None, :, None, None]
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + layer.eps)[None, :, None, None]
    np.testing.assert_allclose(d2x, d2y * scale ** 2, rtol=1e-12)
    np.testing.assert_allclose(d2p["gamma"], (d2y * xhat ** 2).sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(d2p["beta"], d2y.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_eval_mode_needs_state():
    layer = BatchNorm()
    x, p, _ = gradcheck.random_point(layer, (3,), 4)
    with pytest.raises(ValueError, match="running statistics"):
        layer.forward(p, x, False, None)


@pytest.mark.parametrize("train", MODES)
def test_cupy_matches_numpy(gpu, train):
    xp = backend.xp_for("gpu")
    layer = BatchNorm()
    x, p, state = gradcheck.random_point(layer, (3, 4, 4), 3)
    rng = np.random.default_rng(9)
    dy, dx, ddy = (rng.standard_normal(x.shape) for _ in range(3))
    dp = {k: rng.standard_normal(v.shape) for k, v in p.items()}

    def run(xp):
        def on(d):
            return {k: xp.asarray(v) for k, v in d.items()}
        pd, st, dpd = on(p), on(state), on(dp)
        y, cache = layer.forward(pd, xp.asarray(x), train, st)
        out = {"y": y, "rop": layer.rop(pd, cache, dpd, xp.asarray(dx))}
        g = {k: xp.empty_like(v) for k, v in pd.items()}
        out["dx"] = layer.backward(pd, cache, xp.asarray(dy), g)
        out.update({"d" + k: v for k, v in g.items()})
        gg = {k: xp.empty_like(v) for k, v in pd.items()}
        out["ddx"] = layer.backward_rop(pd, cache, xp.asarray(dy), dpd, xp.asarray(dx),
                                        xp.asarray(ddy), gg)
        out.update({"dd" + k: v for k, v in gg.items()})
        if train:
            out.update(layer.new_state(st, cache, 0.1))
        return {k: backend.asnumpy(v) for k, v in out.items()}

    cpu, gpu = run(np), run(xp)
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-10, atol=1e-12, err_msg=k)


def _bn_problem():
    """A Problem whose first layer is batch norm (its input: the images themselves)."""
    from hfmeta.layers import Flatten, Linear, Sequential
    from hfmeta.model import Model
    from hfmeta.problem import Problem
    model = Model(Sequential([("bn", BatchNorm()), ("flatten", Flatten()), ("fc", Linear(3))]),
                  (2, 3, 3), 3, dtype="float64")
    return model, Problem(model)


def test_commit_state_is_pytorch_momentum_0_1():
    """Problem's default bn_momentum 0.1 in the PyTorch convention: one commit moves the
    running statistics 10% of the way to the batch's, r ← 0.9 r + 0.1 batch."""
    model, problem = _bn_problem()
    problem.state = {"bn.running_mean": np.array([2.0, -1.0]), "bn.running_var": np.array([3.0, 0.5])}
    x = np.random.default_rng(0).normal(5.0, 2.0, (6, 2, 3, 3))
    problem.commit_state(problem.linearize(model.init(0), (x, np.zeros(6, int)), True))
    xc = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(problem.state["bn.running_mean"],
                               0.9 * np.array([2.0, -1.0]) + 0.1 * xc.mean(axis=1), rtol=1e-13)
    np.testing.assert_allclose(problem.state["bn.running_var"],
                               0.9 * np.array([3.0, 0.5]) + 0.1 * xc.var(axis=1, ddof=1),
                               rtol=1e-13)


def test_evaluate_in_chunks_weights_each_example_once():
    """Problem.evaluate over 11 examples in chunks of 4 (the last one of 3) must give the
    mean loss and accuracy over all 11, as one pass in eval mode would."""
    model, problem = _bn_problem()
    problem.state = {"bn.running_mean": np.array([0.5, -0.2]), "bn.running_var": np.array([2.0, 0.7])}
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((11, 2, 3, 3)), rng.integers(0, 3, 11)
    w = model.init(1)
    z = model.forward(w, x, False, problem.state)
    nll = np.log(np.exp(z).sum(axis=1)) - z[np.arange(11), y]
    loss, acc = problem.evaluate(w, x, y, batch_size=4)
    np.testing.assert_allclose(loss, nll.mean(), rtol=1e-12)
    assert acc == (z.argmax(axis=1) == y).mean()
