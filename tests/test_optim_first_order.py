"""SGD(m), RMSprop and Adam against three steps computed by hand from the
papers' formulas; the registry, grids and checkpointable state."""
import math

import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.optim import GRIDS, OPTIMIZERS, get_optimizer, grid


class Quadratic:
    """f(w) = ½ Σ a_i w_i², gradient a ⊙ w; counts commit_state calls."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float64)
        self.commits = 0

    def loss_and_grad(self, w, batch):
        return 0.5 * float((self.a * w * w).sum()), self.a * w, ("lin", w.copy())

    def commit_state(self, lin):
        self.commits += 1


A = (1.0, 4.0)
W0 = (1.0, -0.5)


def run(name, steps=3, **hp):
    prob = Quadratic(A)
    opt = get_optimizer(name, **hp)
    w = np.array(W0)
    state = opt.init(w)
    out = []
    for _ in range(steps):
        w, state, info = opt.step(prob, w, state, None)
        out.append(w.copy())
    assert prob.commits == steps           # exactly one commit per step
    return np.array(out), state, info


def test_sgd_momentum_three_steps_by_hand():
    lr, mu = 0.1, 0.9
    expect = []
    for a, w in zip(A, W0):                # each coordinate on its own, scalars only
        v, ws = 0.0, []
        for _ in range(3):
            g = a * w
            v = mu * v + g                 # heavy ball: v ← μv + g
            w = w - lr * v                 #             w ← w − lr v
            ws.append(w)
        expect.append(ws)
    got, _, info = run("sgd", lr=lr, momentum=mu)
    np.testing.assert_allclose(got, np.array(expect).T, rtol=1e-14, atol=0)
    # the literal numbers for coordinate 1 (a = 1, w0 = 1):
    # g=1 v=1 w=0.9;  g=.9 v=1.8 w=.72;  g=.72 v=2.34 w=.486
    np.testing.assert_allclose(got[:, 0], [0.9, 0.72, 0.486], rtol=1e-14)
    assert info["step_norm"] > 0 and math.isfinite(info["loss"])


def test_rmsprop_three_steps_by_hand():
    lr, rho, eps = 0.01, 0.9, 1e-10
    expect = []
    for a, w in zip(A, W0):
        ms, ws = 0.0, []
        for _ in range(3):
            g = a * w
            ms = rho * ms + (1 - rho) * g * g
            w = w - lr * g / math.sqrt(ms + eps)      # ε inside the square root
            ws.append(w)
        expect.append(ws)
    got, _, _ = run("rmsprop", lr=lr, decay=rho, eps=eps)
    np.testing.assert_allclose(got, np.array(expect).T, rtol=1e-13, atol=0)
    # first step: ms = 0.1 g², so Δ = lr g / sqrt(0.1 g²) = lr / sqrt(0.1) per coordinate
    np.testing.assert_allclose(W0[0] - got[0, 0], lr / math.sqrt(0.1), rtol=1e-8)


def test_adam_three_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    expect = []
    for a, w in zip(A, W0):
        m = v = 0.0
        ws = []
        for t in range(1, 4):
            g = a * w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            w = w - lr * m_hat / (math.sqrt(v_hat) + eps)   # ε outside sqrt(v̂)
            ws.append(w)
        expect.append(ws)
    got, state, _ = run("adam", lr=lr, beta1=b1, beta2=b2, eps=eps)
    np.testing.assert_allclose(got, np.array(expect).T, rtol=1e-13, atol=0)
    # first Adam step is lr · sign(g) (up to ε)
    np.testing.assert_allclose(got[0], np.array(W0) - lr * np.sign(np.array(W0)), rtol=1e-7)
    assert state["t"] == 3


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_state_round_trip_continues_exactly(name):
    prob = Quadratic(A)
    opt = get_optimizer(name, lr=0.05)
    w = np.array(W0)
    state = opt.init(w)
    for _ in range(2):
        w, state, _ = opt.step(prob, w, state, None)
    saved = opt.state_to_dict(state)
    assert all(isinstance(v, (int, float, np.ndarray)) for v in saved.values())
    restored = opt.state_from_dict({k: np.asarray(v) for k, v in saved.items()}, np)
    w1, _, _ = opt.step(prob, w.copy(), state, None)
    w2, _, _ = opt.step(prob, w.copy(), restored, None)
    np.testing.assert_array_equal(w1, w2)


def test_registry_and_errors():
    assert set(OPTIMIZERS) == {"sgd", "rmsprop", "adam", "hf-fixed", "hf-lm",
                               "martens-hf", "kfac", "sou"}
    for name, cls in OPTIMIZERS.items():
        opt = get_optimizer(name)
        assert opt.name == name and cls.__doc__ and set(opt.hparams) == set(cls.defaults)
    with pytest.raises(UserError, match="unknown optimizer"):
        get_optimizer("lbfgs")
    with pytest.raises(UserError, match="unknown hyper-parameter"):
        get_optimizer("adam", momentum=0.9)


def test_table1_grids():
    assert len(GRIDS["sgd"]) == 9 and len(GRIDS["rmsprop"]) == 9 and len(GRIDS["adam"]) == 27
    assert len(GRIDS["hf-fixed"]) == 16 and len(GRIDS["hf-lm"]) == 64 and len(GRIDS["kfac"]) == 48
    assert sorted({p["lr"] for p in GRIDS["adam"]}) == [0.001, 0.01, 0.1]
    # b_tr / b_bl scaling of the first-order learning rates only
    assert sorted({p["lr"] for p in grid("sgd", batch_size=512)}) == [0.004, 0.04, 0.4]
    assert sorted({p["lr"] for p in grid("rmsprop", 512, baseline_batch=256)}) == [0.002, 0.02, 0.2]
    assert grid("hf-lm", 512) == GRIDS["hf-lm"]
    for name, points in GRIDS.items():        # every grid point builds its optimizer
        for hp in points:
            get_optimizer(name, **hp)


def least_squares(n=20, i=3, o=2, seed=0):
    """A Linear(3 → 2) model with MSE loss (8 parameters): a quadratic loss whose
    inputs have mean 1, so the Hessian has large off-diagonal entries."""
    from hfmeta.layers import Linear, Sequential
    from hfmeta.losses import MeanSquaredError
    from hfmeta.model import Model
    from hfmeta.problem import Problem
    rng = np.random.default_rng(seed)
    model = Model(Sequential([("fc", Linear(o))]), (i,), o, dtype="float64")
    x, y = 1 + rng.standard_normal((n, i)), rng.standard_normal((n, o))
    return Problem(model, MeanSquaredError()), (x, y), model.init(seed)


def hessian_by_differences(problem, w, batch):
    """The Hessian of a quadratic loss from central differences of its gradient
    (exact up to rounding: the gradient is affine), independent of the curvature code."""
    g = lambda v: problem.loss_and_grad(v, batch)[1]      # noqa: E731
    eye = np.eye(w.size)
    return np.stack([(g(w + e) - g(w - e)) / 2 for e in eye], axis=1)


def rademacher_diagonals(H):
    """Every single-probe Hutchinson estimate v ⊙ Hv, v ∈ {±1}^n (v and −v give the same)."""
    n = H.shape[0]
    out = []
    for bits in range(2 ** (n - 1)):
        v = np.array([1.0] + [1.0 - 2.0 * ((bits >> k) & 1) for k in range(n - 1)])
        out.append(v * (H @ v))
    return np.array(out)


def sou_probe(w, w1, g, lr, mu, H):
    """The single-probe estimate h with w1 = w − lr g / (|h| + μ), or fail.  (The two
    outputs' parameters do not interact, so several probes can give the same h.)"""
    hs = rademacher_diagonals(H)
    match = [h for h in hs if np.allclose(w - lr * g / (np.abs(h) + mu), w1, rtol=1e-10, atol=0)]
    assert match, "no Rademacher probe reproduces the step"
    for h in match[1:]:
        np.testing.assert_allclose(h, match[0], rtol=1e-10)
    return match[0]


def test_sou_divides_by_the_absolute_diagonal():
    """SOU's step is lr·g/(|h| + μ) (Becker & LeCun's absolute value): a negative
    Hutchinson estimate (one probe: v ⊙ Hv has negative entries even for a PSD H)
    must not flip or blow up the step.  h is recovered among all 2⁷ probes."""
    problem, batch, w = least_squares()
    lr, mu = 0.1, 1e-3
    opt = get_optimizer("sou", lr=lr, mu=mu, diagonal="hutchinson-hessian", samples=1, seed=0)
    w1, state, info = opt.step(problem, w, opt.init(w), batch)
    g = problem.loss_and_grad(w, batch)[1]
    H = hessian_by_differences(problem, w, batch)
    h = sou_probe(w, w1, g, lr, mu, H)
    assert (h < -mu).any()                          # the case the absolute value is for
    assert np.all(np.sign(w - w1) == np.sign(g))    # never a step up the gradient
    assert info["h_mean"] == pytest.approx(np.abs(h).mean(), rel=1e-10)
    assert state["t"] == 1


def test_sou_draws_a_new_probe_each_step():
    """Random diagonals draw from default_rng([seed, t]): the same w and batch at
    t = 0 and t = 1 get different probes (and the same t the same one)."""
    problem, batch, w = least_squares()
    lr, mu = 0.1, 1e-3
    opt = get_optimizer("sou", lr=lr, mu=mu, diagonal="hutchinson", samples=1, seed=3)
    g = problem.loss_and_grad(w, batch)[1]
    H = hessian_by_differences(problem, w, batch)
    steps = [opt.step(problem, w.copy(), {"t": t}, batch)[0] for t in (0, 1, 0)]
    h0, h1 = (sou_probe(w, s, g, lr, mu, H) for s in steps[:2])
    assert not np.allclose(np.abs(h0), np.abs(h1))
    np.testing.assert_array_equal(steps[0], steps[2])


def test_table1_second_order_grid_values():
    """The second-order grids hold Table 1's values (MLHF supplement): lr and
    (init) damping {1, 0.1, 0.01, 0.001}, LM decay {2/3, 0.9, 0.99, 0.999}, PCG
    n = 20, ε = 1e-5, momentum 0 at every HF point; K-FAC's cov_ema_decay
    {0.9, 0.99, 0.999}; none of them scales with the batch size."""
    decades = [0.001, 0.01, 0.1, 1.0]
    for name in ("hf-fixed", "hf-lm", "kfac"):
        points = GRIDS[name]
        assert sorted({p["lr"] for p in points}) == decades
        assert sorted({p["damping"] for p in points}) == decades
        assert grid(name, 512) == points and grid(name, 512, baseline_batch=256) == points
    decays = sorted({p["decay"] for p in GRIDS["hf-lm"]})
    assert decays == pytest.approx([2 / 3, 0.9, 0.99, 0.999], rel=1e-15)
    assert sorted({p["cov_ema_decay"] for p in GRIDS["kfac"]}) == [0.9, 0.99, 0.999]
    for p in GRIDS["hf-fixed"] + GRIDS["hf-lm"]:
        assert (p["cg_iters"], p["cg_eps"], p["momentum"]) == (20, 1e-5, 0.0)
    # every (lr, damping[, decay]) combination once
    assert len({(p["lr"], p["damping"], p["decay"]) for p in GRIDS["hf-lm"]}) == 64
    assert len({(p["lr"], p["damping"], p["cov_ema_decay"]) for p in GRIDS["kfac"]}) == 48
