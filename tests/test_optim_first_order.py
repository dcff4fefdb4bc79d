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
