"""PreActBlock (ResNet v2): finite-difference checks, graph wiring, running state, hooks."""
import numpy as np
import pytest

from hfmeta import gradcheck
from hfmeta.layers import PreActBlock

#: (label, factory, input shape): identity, stride 2 + projection, channel change, forced
BLOCKS = [
    ("identity s1", lambda: PreActBlock(2), (2, 6, 6)),
    ("s2 projection", lambda: PreActBlock(2, stride=2), (2, 6, 6)),
    ("2->3 projection", lambda: PreActBlock(3), (2, 6, 6)),
    ("forced projection", lambda: PreActBlock(2, projection=True), (2, 5, 5)),
]
MODES = [True, False]


@pytest.mark.parametrize("label,factory,in_shape", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("train", MODES, ids=["train", "eval"])
def test_derivatives(label, factory, in_shape, train):
    name = f"block {label} train={train}"
    results = gradcheck.check_map(name, *gradcheck.layer_map(factory(), in_shape, 2, train))
    results.append(gradcheck.check_backward_rop(name, factory(), in_shape, 2, train))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8, gradcheck.format_table(results)


def test_projection_choice_and_shapes():
    assert PreActBlock(4).build((4, 6, 6)) == (4, 6, 6)
    assert PreActBlock(5, stride=2).build((4, 7, 7)) == (5, 4, 4)
    names = {n for n, _, _ in _built(PreActBlock(4), (4, 6, 6)).param_specs()}
    assert names == {"bn1.gamma", "bn1.beta", "conv1.weight", "bn2.gamma", "bn2.beta",
                     "conv2.weight"}
    forced = _built(PreActBlock(4, projection=True), (4, 6, 6))
    assert ("proj.weight", (4, 4, 1, 1), "conv.weight") in forced.param_specs()
    assert {n for n, _, _ in forced.state_specs()} == {
        "bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"}
    with pytest.raises(ValueError, match="projection"):
        PreActBlock(4, stride=2, projection=False).build((4, 6, 6))


def _built(block, in_shape):
    block.build(in_shape)
    return block


@pytest.mark.parametrize("label,factory,in_shape", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("train", MODES, ids=["train", "eval"])
def test_forward_is_the_preactivation_graph(label, factory, in_shape, train):
    """y = conv2(relu(bn2(conv1(a)))) + (proj(a) or x), a = relu(bn1(x)), child by child."""
    block = factory()
    x, p, state = gradcheck.random_point(block, in_shape, 2)
    y, _ = block.forward(p, x, train, state)

    def apply(name, u):
        return block.layer[name].forward(block.sub(p, name), u, train, block.sub(state, name))[0]
    a = apply("relu1", apply("bn1", x))
    h = apply("conv2", apply("relu2", apply("bn2", apply("conv1", a))))
    shortcut = apply("proj", a) if block.has_projection else x
    np.testing.assert_allclose(y, h + shortcut, rtol=1e-13, atol=1e-13)


def test_new_state_updates_both_batchnorms():
    block = PreActBlock(3, stride=2)
    x, p, state = gradcheck.random_point(block, (2, 6, 6), 3)
    _, cache = block.forward(p, x, True, state)
    new = block.new_state(state, cache, 0.1)
    assert set(new) == set(state)
    for name in ("bn1", "bn2"):
        want = block.layer[name].new_state(block.sub(state, name), cache[name], 0.1)
        for k, v in want.items():
            np.testing.assert_array_equal(new[f"{name}.{k}"], v)
            assert not np.allclose(v, state[f"{name}.{k}"])
    x0 = np.moveaxis(x, 1, 0).reshape(2, -1)  # bn1 sees x itself
    np.testing.assert_allclose(new["bn1.running_mean"],
                               0.9 * state["bn1.running_mean"] + 0.1 * x0.mean(axis=1))


@pytest.mark.parametrize("label,factory,in_shape", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_sq_grad_eval_is_sum_of_squared_per_example_gradients(label, factory, in_shape):
    block = factory()
    x, p, state = gradcheck.random_point(block, in_shape, 3)
    _, cache = block.forward(p, x, False, state)
    dy = np.random.default_rng(2).standard_normal((3,) + block.out_shape)
    sq = {n: np.zeros(s) for n, s, _ in block.param_specs()}
    block.sq_grad(p, cache, dy, sq)
    want = {n: np.zeros(s) for n, s, _ in block.param_specs()}
    for i in range(3):
        _, ci = block.forward(p, x[i:i + 1], False, state)
        g = {n: np.empty(s) for n, s, _ in block.param_specs()}
        block.backward(p, ci, dy[i:i + 1], g, False)
        for n in want:
            want[n] += g[n] ** 2
    for n in want:
        np.testing.assert_allclose(sq[n], want[n], rtol=1e-12, atol=1e-14, err_msg=n)


def test_sq_grad_train_raises():
    block = PreActBlock(2)
    x, p, state = gradcheck.random_point(block, (2, 4, 4), 2)
    _, cache = block.forward(p, x, True, state)
    sq = {n: np.zeros(s) for n, s, _ in block.param_specs()}
    with pytest.raises(NotImplementedError):
        block.sq_grad(p, cache, np.ones((2,) + block.out_shape), sq)


@pytest.mark.parametrize("label,factory,in_shape", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_backward_diag(label, factory, in_shape):
    """Becker-LeCun through the graph.  The output layers (conv2, proj) are linear in their
    weights, so there it is exact: d2W = Σ_j d2y_j (∂y_j/∂W)², checked with one backward
    pass per output coordinate j.  Upstream, cross terms are dropped; there the block must
    equal the children's passes walked by hand (the two paths add at a, and at x for the
    identity shortcut)."""
    block = factory()
    x, p, state = gradcheck.random_point(block, in_shape, 1)
    _, cache = block.forward(p, x, True, state)
    out_shape = (1,) + block.out_shape
    d2y = np.random.default_rng(4).random(out_shape)
    d2p = {n: np.empty(s) for n, s, _ in block.param_specs()}
    d2x = block.backward_diag(p, cache, d2y, d2p)

    last = ["conv2.weight"] + (["proj.weight"] if block.has_projection else [])
    exact = {n: 0.0 for n in last}
    for j, e in enumerate(np.eye(d2y.size)):
        g = {n: np.empty(s) for n, s, _ in block.param_specs()}
        block.backward(p, cache, e.reshape(out_shape), g, False)
        for n in last:
            exact[n] = exact[n] + d2y.ravel()[j] * g[n] ** 2
    for n in last:
        np.testing.assert_allclose(d2p[n], exact[n], rtol=1e-12, err_msg=n)

    want = {}

    def diag(name, d2):
        out = {k: np.empty(v.shape) for k, v in block.sub(p, name).items()}
        d2in = block.layer[name].backward_diag(block.sub(p, name), cache[name], d2, out)
        want.update({f"{name}.{k}": v for k, v in out.items()})
        return d2in
    d2a = diag("conv1", diag("bn2", diag("relu2", diag("conv2", d2y))))
    if block.has_projection:
        d2a = d2a + diag("proj", d2y)
    want_x = diag("bn1", diag("relu1", d2a)) + (0 if block.has_projection else d2y)
    np.testing.assert_allclose(d2x, want_x, rtol=1e-13)
    for n in want:
        np.testing.assert_allclose(d2p[n], want[n], rtol=1e-13, err_msg=n)


@pytest.mark.parametrize("train", MODES, ids=["train", "eval"])
def test_parameter_only_paths(train):
    """need_dx=False and a zero input direction (dx=None), as a model's first block sees them,
    give the same parameter parts as the full passes with dx = 0."""
    block = PreActBlock(2)
    x, p, state = gradcheck.random_point(block, (2, 5, 5), 2)
    _, cache = block.forward(p, x, train, state)
    rng = np.random.default_rng(6)
    dy, ddy = (rng.standard_normal((2,) + block.out_shape) for _ in range(2))
    dp = {n: rng.standard_normal(s) for n, s, _ in block.param_specs()}
    np.testing.assert_allclose(block.rop(p, cache, dp, None),
                               block.rop(p, cache, dp, np.zeros_like(x)), rtol=1e-14)
    assert block.rop(p, cache, None, None) is None
    g_full, g_part = ({n: np.empty(s) for n, s, _ in block.param_specs()} for _ in range(2))
    assert block.backward(p, cache, dy, g_full, True).shape == x.shape
    assert block.backward(p, cache, dy, g_part, False) is None
    h_full, h_part = ({n: np.empty(s) for n, s, _ in block.param_specs()} for _ in range(2))
    block.backward_rop(p, cache, dy, dp, np.zeros_like(x), ddy, h_full, True)
    assert block.backward_rop(p, cache, dy, dp, None, ddy, h_part, False) is None
    for n in g_full:
        np.testing.assert_allclose(g_part[n], g_full[n], rtol=1e-14, err_msg=n)
        np.testing.assert_allclose(h_part[n], h_full[n], rtol=1e-13, atol=1e-14, err_msg=n)
