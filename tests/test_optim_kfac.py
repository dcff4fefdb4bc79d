"""K-FAC/KFC: the Kronecker factors against brute-force expectations (explicit
patch loops, finite-difference output cotangents) on a tiny conv net and a
tiny fc net; the preconditioned step against a dense Kronecker solve; EMA,
inverse refresh, batch-norm parameters."""
import numpy as np
import pytest

from hfmeta.layers import BatchNorm, Conv2d, Flatten, Linear, ReLU, Sequential
from hfmeta.layers.container import Composite
from hfmeta.model import Model
from hfmeta.optim import get_optimizer
from hfmeta.optim.kfac import KFAC, damped_inverses, kfac_layers
from hfmeta.problem import Problem


def tiny_conv():
    net = Sequential([("conv", Conv2d(3, 3, stride=2, padding=1)), ("relu", ReLU()),
                      ("flatten", Flatten()), ("fc", Linear(4))])
    return Model(net, (2, 5, 5), 4, dtype="float64")


def tiny_fc():
    net = Sequential([("fc1", Linear(4)), ("relu", ReLU()), ("fc2", Linear(3))])
    return Model(net, (5,), 3, dtype="float64")


def setup(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + model.in_shape)
    y = rng.integers(0, model.classes, n)
    return Problem(model), (x, y), model.init(seed)


def run_children(model, w, x, start, stop):
    """Forward through children[start:stop] of the top Sequential (train mode)."""
    p = model.layout.views(w)
    for name, layer in model.net.children[start:stop]:
        x, _ = layer.forward(Composite.sub(p, name), x, True)
    return x


def brute_force_factors(model, w, x, labels, k, h=1e-6):
    """A = E_{n,t}[ā āᵀ] by explicit patch loops, G = |T| E_{n,t}[ds dsᵀ] with ds
    from central differences of the sampled-label loss w.r.t. layer k's output."""
    from hfmeta.losses import SoftmaxCrossEntropy
    layer = model.net.children[k][1]
    inp = run_children(model, w, x, 0, k)
    s = run_children(model, w, inp, k, k + 1)
    n = x.shape[0]
    loss = SoftmaxCrossEntropy()

    def rest(s):
        return loss.value(run_children(model, w, s, k + 1, len(model.net.children)), labels)

    ds = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        e = np.zeros_like(s)
        e[idx] = h
        ds[idx] = n * (rest(s + e) - rest(s - e)) / (2 * h)     # per-example: × n
    if isinstance(layer, Linear):
        abar = np.hstack([inp, np.ones((n, 1))])
        return abar.T @ abar / n, ds.T @ ds / n
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    xp_ = np.pad(inp, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    _, o, ho, wo = s.shape
    A = np.zeros((inp.shape[1] * kh * kw + 1,) * 2)
    G = np.zeros((o, o))
    for i in range(n):
        for a in range(ho):
            for b in range(wo):
                patch = xp_[i, :, a * sh:a * sh + kh, b * sw:b * sw + kw].ravel()   # (c, kh, kw)
                abar = np.append(patch, 1.0)
                A += np.outer(abar, abar)
                G += np.outer(ds[i, :, a, b], ds[i, :, a, b])
    T = ho * wo
    return A / (n * T), T * G / (n * T)


def sampled_labels(problem, w, batch, seed, t):
    z = problem.linearize(w, batch).output
    return problem.loss_fn.sample_labels(z, np.random.default_rng([seed, t]))


@pytest.mark.parametrize("make", [tiny_conv, tiny_fc])
def test_factors_equal_brute_force_expectations(make):
    model = make()
    problem, batch, w = setup(model)
    opt = get_optimizer("kfac", lr=0.1, seed=7)
    state = opt.init(w)
    _, state, _ = opt.step(problem, w, state, batch)       # t = 0: factors = first estimate
    labels = sampled_labels(problem, w, batch, 7, 0)
    paths = [p for p, _ in kfac_layers(model)]
    for path in paths:
        k = [name for name, _ in model.net.children].index(path)
        A, G = brute_force_factors(model, w, batch[0], labels, k)
        np.testing.assert_allclose(state[f"A:{path}"], A, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state[f"G:{path}"], G, rtol=1e-7, atol=1e-10)
    for _, layer in kfac_layers(model):
        assert "backward" not in layer.__dict__           # the recording hook is removed


@pytest.mark.parametrize("make", [tiny_conv, tiny_fc])
def test_step_equals_dense_kronecker_solve(make):
    model = make()
    problem, batch, w = setup(model, seed=1)
    lam = 0.05
    opt = get_optimizer("kfac", lr=1.0, damping=lam, momentum=0.0, inverse_every=1)
    w1, state, _ = opt.step(problem, w, opt.init(w), batch)
    g = problem.loss_and_grad(w, batch)[1]
    gv, dv = model.layout.views(g), model.layout.views(w - w1)
    for path, layer in kfac_layers(model):
        A, G = state[f"A:{path}"], state[f"G:{path}"]
        pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
        gA, gG = pi * np.sqrt(lam), np.sqrt(lam) / pi
        gW = gv[f"{path}.weight"].reshape(G.shape[0], -1)
        grad = np.hstack([gW, gv[f"{path}.bias"][:, None]])
        # (A ⊗ G) vec(X) = vec(G X A) for column-major vec, A symmetric
        F = np.kron(A + gA * np.eye(A.shape[0]), G + gG * np.eye(G.shape[0]))
        U = np.linalg.solve(F, grad.ravel(order="F")).reshape(grad.shape, order="F")
        step = np.hstack([dv[f"{path}.weight"].reshape(G.shape[0], -1), dv[f"{path}.bias"][:, None]])
        np.testing.assert_allclose(step, U, rtol=1e-9, atol=1e-13)


def test_every_convolution_algorithm_gives_the_same_step():
    """K-FAC unfolds a convolution's input whichever algorithm its forward used."""
    def net(algorithm):
        seq = Sequential([("conv", Conv2d(3, 3, padding=1, algorithm=algorithm)),
                          ("relu", ReLU()), ("flatten", Flatten()), ("fc", Linear(4))])
        return Model(seq, (2, 5, 5), 4, dtype="float64")
    steps = []
    for algorithm in ("im2col", "fft", "shift"):
        problem, batch, w = setup(net(algorithm), seed=2)
        opt = get_optimizer("kfac", lr=1.0, damping=0.05, momentum=0.0, inverse_every=1)
        steps.append(w - opt.step(problem, w, opt.init(w), batch)[0])
    for step in steps[1:]:
        np.testing.assert_allclose(step, steps[0], rtol=1e-9, atol=1e-13)


def test_damped_inverses_pi_correction():
    rng = np.random.default_rng(0)
    a, g = rng.standard_normal((4, 4)), rng.standard_normal((2, 2))
    A, G = a @ a.T, 10 * g @ g.T
    Ai, Gi = damped_inverses(A, G, 0.01)
    pi = np.sqrt((np.trace(A) / 4) / (np.trace(G) / 2))
    np.testing.assert_allclose(Ai @ (A + pi * 0.1 * np.eye(4)), np.eye(4), atol=1e-10)
    np.testing.assert_allclose(Gi @ (G + 0.1 / pi * np.eye(2)), np.eye(2), atol=1e-10)


def test_ema_and_inverse_refresh():
    model = tiny_fc()
    problem, batch, w = setup(model)
    opt = get_optimizer("kfac", lr=0.1, cov_ema_decay=0.95, inverse_every=3, seed=2)
    state = opt.init(w)
    ws, As, Ainvs = [w], [], []
    for _ in range(4):
        w, state, _ = opt.step(problem, w, state, batch)
        ws.append(w)
        As.append(state["A:fc2"].copy())
        Ainvs.append(state["Ainv:fc2"].copy())
    # step 2 (t = 1): decay min(0.95, 1 − 1/2) = 0.5 with the estimate at w1, labels [2, 1]
    fresh = {"t": 1}
    KFAC(seed=2).update_factors(problem, problem.linearize(ws[1], batch), fresh)
    np.testing.assert_allclose(As[1], 0.5 * As[0] + 0.5 * fresh["A:fc2"], rtol=1e-13)
    # inverses at t = 0 and t = 3 only
    assert np.array_equal(Ainvs[0], Ainvs[1]) and np.array_equal(Ainvs[1], Ainvs[2])
    assert not np.allclose(Ainvs[2], Ainvs[3])
    restored = opt.state_from_dict(opt.state_to_dict(state), np)
    a, _, _ = opt.step(problem, w, state, batch)
    b, _, _ = opt.step(problem, w, restored, batch)
    np.testing.assert_array_equal(a, b)


def test_batchnorm_parameters_take_plain_gradient_steps():
    net = Sequential([("fc1", Linear(4)), ("bn", BatchNorm()), ("relu", ReLU()),
                      ("fc2", Linear(3))])
    model = Model(net, (5,), 3, dtype="float64")
    problem, batch, w = setup(model, n=6)
    opt = get_optimizer("kfac", lr=0.3, momentum=0.0)
    w1, _, _ = opt.step(problem, w, opt.init(w), batch)
    g = problem.loss_and_grad(w, batch)[1]
    for kind in ("bn.gamma", "bn.beta"):
        sl = model.layout.kind_slice(kind)
        np.testing.assert_allclose(w[sl] - w1[sl], 0.3 * g[sl], rtol=1e-13)
    assert [p for p, _ in kfac_layers(model)] == ["fc1", "fc2"]


def test_norm_constraint_and_momentum():
    model = tiny_fc()
    problem, batch, w = setup(model)
    free = get_optimizer("kfac", lr=1.0, momentum=0.0)
    w_free, _, info = free.step(problem, w, free.init(w), batch)
    u = w - w_free
    g = problem.loss_and_grad(w, batch)[1]
    c = 0.1 * float(u @ g)                        # forces a scale of sqrt(0.1)
    capped = get_optimizer("kfac", lr=1.0, momentum=0.0, norm_constraint=c)
    w_cap, _, info = capped.step(problem, w, capped.init(w), batch)
    assert info["norm_scale"] == pytest.approx(np.sqrt(0.1), rel=1e-12)
    np.testing.assert_allclose(w - w_cap, np.sqrt(0.1) * u, rtol=1e-12)


def test_ema_decay_is_capped_by_cov_ema_decay():
    """From step 3 on (t = 2: 1 − 1/3 = 2/3 > 0.5) the EMA uses cov_ema_decay = 0.5, not
    the warm-up value 1 − 1/(t+1): the cap was untested (t ≤ 1 gives 0 and 0.5 either way)."""
    model = tiny_fc()
    problem, batch, w = setup(model)
    opt = get_optimizer("kfac", lr=0.1, cov_ema_decay=0.5, seed=3)
    state = opt.init(w)
    ws, factors_ = [w], []
    for _ in range(4):
        w, state, _ = opt.step(problem, w, state, batch)
        ws.append(w)
        factors_.append({k: state[k].copy() for k in ("A:fc1", "G:fc1", "A:fc2", "G:fc2")})
    for t in (2, 3):
        fresh = {"t": t}
        KFAC(seed=3).update_factors(problem, problem.linearize(ws[t], batch), fresh)
        for key, value in factors_[t].items():
            np.testing.assert_allclose(value, 0.5 * factors_[t - 1][key] + 0.5 * fresh[key],
                                       rtol=1e-12, atol=1e-15)


def test_default_inverse_refresh_every_20_steps():
    """With the defaults (inverse_every 20) the inverses are computed at step 1 (t = 0) and
    next at step 21 (t = 20): the stored inverses stay fixed for steps 1..20, then change."""
    model = tiny_fc()
    problem, batch, w = setup(model)
    opt = get_optimizer("kfac")
    state = opt.init(w)
    inverses = []
    for _ in range(21):
        w, state, _ = opt.step(problem, w, state, batch)
        inverses.append((state["Ainv:fc2"].copy(), state["Ginv:fc1"].copy()))
    for a, g in inverses[1:20]:
        assert np.array_equal(a, inverses[0][0]) and np.array_equal(g, inverses[0][1])
    assert not np.allclose(inverses[20][0], inverses[0][0])
    assert not np.allclose(inverses[20][1], inverses[0][1])
