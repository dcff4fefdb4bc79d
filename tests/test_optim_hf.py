"""HF(Fixed), HF(LM) and Martens' HF: exact solves on a convex quadratic, the
LM rule, Martens' CG stopping rule, save points, backtracking and line search."""
import math

import numpy as np
import pytest

from hfmeta.layers import Linear, Sequential
from hfmeta.losses import MeanSquaredError
from hfmeta.model import Model
from hfmeta.optim import get_optimizer
from hfmeta.optim.hf import levenberg_marquardt
from hfmeta.optim.martens_hf import backtrack, martens_cg, save_points, should_stop
from hfmeta.problem import Problem


def least_squares(n=20, i=3, o=2, seed=0):
    """A Linear model with MSE loss: the GGN is the exact Hessian (8 parameters)."""
    rng = np.random.default_rng(seed)
    model = Model(Sequential([("fc", Linear(o))]), (i,), o, dtype="float64")
    x, y = rng.standard_normal((n, i)), rng.standard_normal((n, o))
    return Problem(model, MeanSquaredError()), (x, y), model.init(seed)


def dense_ggn(problem, w, batch):
    lin = problem.linearize(w, batch)
    eye = np.eye(w.size)
    return np.stack([problem.gvp(lin, e) for e in eye], axis=1)


def lstsq_solution(problem, batch):
    x, y = batch
    xt = np.hstack([x, np.ones((x.shape[0], 1))])
    wb = np.linalg.lstsq(xt, y, rcond=None)[0]            # (i+1, o)
    return {"fc.weight": wb[:-1].T, "fc.bias": wb[-1]}


def test_hf_fixed_exact_cg_solves_quadratic_in_one_step():
    problem, batch, w = least_squares()
    opt = get_optimizer("hf-fixed", lr=1.0, damping=0.0, cg_iters=w.size, cg_eps=0.0)
    state = opt.init(w)
    w1, state, info = opt.step(problem, w, state, batch)
    best = lstsq_solution(problem, batch)
    views = problem.model.layout.views(w1)
    for name in best:
        np.testing.assert_allclose(views[name], best[name], rtol=1e-10, atol=1e-12)
    g1 = problem.loss_and_grad(w1, batch)[1]
    assert np.abs(g1).max() < 1e-12 and info["cg_iters"] <= w.size


def test_hf_curvature_batch_uses_the_first_examples():
    problem, batch, w = least_squares(n=30)
    m = 7
    opt = get_optimizer("hf-fixed", lr=0.5, damping=0.1, cg_iters=w.size, cg_eps=0.0,
                        curvature_batch=m)
    w1, _, _ = opt.step(problem, w, opt.init(w), batch)
    G = dense_ggn(problem, w, (batch[0][:m], batch[1][:m]))
    g = problem.loss_and_grad(w, batch)[1]
    expect = w - 0.5 * np.linalg.solve(G + 0.1 * np.eye(w.size), g)
    np.testing.assert_allclose(w1, expect, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rho, expect", [
    (0.1, 0.15),          # ρ < 1/4: λ / (2/3)
    (-3.0, 0.15),
    (0.25, 0.1),          # boundaries leave λ alone
    (0.5, 0.1),
    (0.75, 0.1),
    (0.9, 0.1 * 2 / 3),   # ρ > 3/4: λ · 2/3
])
def test_lm_rule_on_constructed_rho(rho, expect):
    assert levenberg_marquardt(0.1, rho, 2 / 3, 1e-3, 1.0) == pytest.approx(expect, rel=1e-15)


def test_lm_rule_clips_to_bounds():
    assert levenberg_marquardt(0.9, 0.0, 2 / 3, 1e-3, 1.0) == 1.0       # 1.35 → 1
    assert levenberg_marquardt(1e-3, 1.0, 0.9, 1e-3, 1.0) == 1e-3       # 9e-4 → 1e-3
    assert levenberg_marquardt(0.5, 1.0, 0.99, 1e-3, 1.0) == pytest.approx(0.495)


def test_hf_lm_rho_and_damping_on_quadratic():
    problem, batch, w = least_squares()
    lam, lr = 0.5, 0.8
    opt = get_optimizer("hf-lm", lr=lr, damping=lam, decay=0.9, cg_iters=w.size, cg_eps=0.0)
    state = opt.init(w)
    w1, state, info = opt.step(problem, w, state, batch)
    G = dense_ggn(problem, w, batch)
    g = problem.loss_and_grad(w, batch)[1]
    d = np.linalg.solve(G + lam * np.eye(w.size), g)
    # the loss is quadratic: actual change = −lr gᵀd + lr²/2 dᵀGd exactly
    actual = -lr * g @ d + 0.5 * lr ** 2 * d @ G @ d
    model = -lr * g @ d + 0.5 * lr ** 2 * d @ (G + lam * np.eye(w.size)) @ d
    rho = actual / model
    assert info["rho"] == pytest.approx(rho, rel=1e-8)
    np.testing.assert_allclose(w1, w - lr * d, rtol=1e-9, atol=1e-12)
    expect = lam / 0.9 if rho < 0.25 else lam * 0.9 if rho > 0.75 else lam
    assert state["damping"] == pytest.approx(min(max(expect, 1e-3), 1.0), rel=1e-12)
    assert info["damping"] == lam


def test_martens_stopping_rule_on_constructed_phi():
    # φ_i = −i up to i = 100, then flat at −100.  Before the plateau the
    # relative progress over k steps is k/i ≥ k·5e-4 (needs i > 2000): no stop.
    # After it, (φ_i − φ_{i−k})/φ_i = (100 − (i−k))/100 < k·5e-4 ⇔ i > 100 + 0.95 k,
    # k = ⌈0.1 i⌉: i = 111 → k = 12, 111 ≤ 111.4 (go on); i = 112 → k = 12, 112 > 111.4: stop.
    phi = [-float(min(i, 100)) for i in range(300)]
    first = next(i for i in range(300) if should_stop(phi, i))
    assert first == 112
    # i must exceed k = 10: a flat sequence stops at i = 11, not before
    flat = [0.0] + [-1.0] * 30
    assert [i for i in range(31) if should_stop(flat, i)][0] == 11
    # φ_i ≥ 0 never stops
    assert not any(should_stop([0.0] + [1.0] * 50, i) for i in range(51))


def test_martens_save_points():
    # ⌈5·1.3^j⌉: 5, 6.5, 8.45, 10.99, 14.28, 18.56, 24.13, 31.37, 40.79, 53.02, 68.9
    assert save_points(60) == {5, 7, 9, 11, 15, 19, 25, 32, 41, 54}
    assert save_points(4) == set()


def test_martens_cg_phi_and_saved_iterates():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((30, 30))
    A = M @ M.T / 30 + 0.1 * np.eye(30)
    b = rng.standard_normal(30)
    x0 = 0.1 * rng.standard_normal(30)
    x, saved, phi = martens_cg(lambda v: A @ v, b, x0, max_iters=250)
    # stopped by relative progress: φ is within 1e-5 (relative) of its minimum −½ bᵀA⁻¹b
    phi_min = -0.5 * b @ np.linalg.solve(A, b)
    assert 0 <= (phi[-1] - phi_min) / abs(phi_min) < 1e-5
    assert phi[0] == pytest.approx(0.5 * x0 @ A @ x0 - b @ x0, rel=1e-12)
    for i, xi, phii in saved:
        assert phii == pytest.approx(0.5 * xi @ A @ xi - b @ xi, rel=1e-10)
        assert phii == phi[i]
    assert [s[0] for s in saved][:-1] == sorted(save_points(250) & set(range(len(phi))))[:len(saved) - 1]
    assert saved[-1][0] == len(phi) - 1 and np.array_equal(saved[-1][1], x)
    assert should_stop(phi, len(phi) - 1)


def test_martens_backtracking_picks_the_last_local_best():
    saved = [(5, np.array([5.0]), -1.0), (7, np.array([7.0]), -2.0),
             (9, np.array([9.0]), -3.0), (11, np.array([11.0]), -4.0)]
    losses = {5: 3.0, 7: 2.0, 9: 1.5, 11: 1.7}
    i, x, phi, f = backtrack(saved, lambda x: losses[int(x[0])])
    assert (i, phi, f) == (9, -3.0, 1.5)        # 11 → 9 (lower), 9 → 7 is higher: stop
    losses[11] = 1.0
    assert backtrack(saved, lambda x: losses[int(x[0])])[0] == 11


class UnderestimatedQuadratic:
    """f = ½ wᵀHw − bᵀw whose 'curvature' products are s·H v (+ λv): CG steps are 1/s too long."""

    def __init__(self, H, b, s):
        self.H, self.b, self.s = H, b, s
        self.commits = 0

    def loss(self, w, batch):
        return 0.5 * w @ self.H @ w - self.b @ w

    def loss_and_grad(self, w, batch):
        return self.loss(w, batch), self.H @ w - self.b, None

    def commit_state(self, lin):
        self.commits += 1

    def gvp(self, lin, v, damping=None):
        return self.s * (self.H @ v) + (0 if damping is None else damping * v)


def test_martens_armijo_line_search_and_lm():
    # x = (sH)⁻¹ g = 100 H⁻¹ g.  With q = gᵀH⁻¹g: f(w − αx) − f(w) = q(−100α + 5000α²),
    # Armijo needs ≤ −c α gᵀx = −100 c α q  ⇔  α ≤ 100(1 − c)/5000 = 0.0198:
    # 0.8^17 = 0.0225 fails, 0.8^18 = 0.0180 passes → 19 loss evaluations.
    # ρ = 4900 q / φ(x), φ(x) = ½·100 q − 100 q = −50 q → ρ = −98 → λ ×3/2.
    H = np.diag([1.0, 3.0])
    prob = UnderestimatedQuadratic(H, np.array([1.0, -2.0]), s=0.01)
    lam = 1e-12
    opt = get_optimizer("martens-hf", damping=lam)
    w = np.array([0.5, 0.5])
    w1, state, info = opt.step(prob, w, opt.init(w), None)
    assert info["alpha"] == pytest.approx(0.8 ** 18, rel=1e-12)
    assert info["line_search_tries"] == 19
    assert info["rho"] == pytest.approx(-98.0, rel=1e-6)
    assert state["damping"] == pytest.approx(1.5 * lam, rel=1e-12)
    x = 100 * np.linalg.solve(H, H @ w - prob.b)
    np.testing.assert_allclose(w1, w - 0.8 ** 18 * x, rtol=1e-6)
    assert prob.commits == 1
    # the state keeps the last CG iterate (the next step starts CG at 0.95 × it:
    # test_martens_warm_start_is_095_of_the_last_iterate)
    np.testing.assert_allclose(state["x"], x, rtol=1e-6)


def test_martens_hf_on_least_squares():
    problem, batch, w = least_squares()
    opt = get_optimizer("martens-hf", damping=1e-9)
    state = opt.init(w)
    w1, state, info = opt.step(problem, w, state, batch)
    best = lstsq_solution(problem, batch)
    views = problem.model.layout.views(w1)
    for name in best:
        np.testing.assert_allclose(views[name], best[name], rtol=1e-7, atol=1e-9)
    assert info["alpha"] == 1.0 and info["rho"] == pytest.approx(1.0, abs=1e-6)
    assert state["damping"] == pytest.approx(1e-9 * 2 / 3)     # ρ > 3/4 → λ ×2/3


def test_hf_state_round_trip():
    problem, batch, w = least_squares()
    for name in ("hf-fixed", "hf-lm", "martens-hf"):
        opt = get_optimizer(name, **({"momentum": 0.5} if name != "martens-hf" else {}))
        state = opt.init(w)
        w1, state, _ = opt.step(problem, w, state, batch)
        restored = opt.state_from_dict(opt.state_to_dict(state), np)
        a, _, _ = opt.step(problem, w1, state, batch)
        b, _, _ = opt.step(problem, w1, restored, batch)
        np.testing.assert_array_equal(a, b)
        assert math.isfinite(float(problem.loss(a, batch)))


def hf_lm_rho_by_hand(prob, w, lam, lr):
    """ρ of an exact HF(LM) step on an UnderestimatedQuadratic: d = (sH + λI)⁻¹g,
    ρ = (f(w − lr d) − f(w)) / (−lr gᵀd + lr²/2 dᵀ(sH + λI)d)."""
    A = prob.s * prob.H + lam * np.eye(w.size)
    g = prob.H @ w - prob.b
    d = np.linalg.solve(A, g)
    actual = prob.loss(w - lr * d, None) - prob.loss(w, None)
    return actual / (-lr * g @ d + 0.5 * lr ** 2 * d @ A @ d)


def test_hf_lm_default_damping_range_is_table1():
    """HF(LM)'s default clip range is METHODS' [1e-3, 1]: at λ = 1 a step with
    ρ < 1/4 (curvature 100× underestimated) keeps λ = 1 (not 1/0.99); at
    λ = 1e-3 a step with ρ > 3/4 (exact curvature) keeps λ = 1e-3 (not 0.99e-3)."""
    H, b, w = np.diag([10.0, 20.0]), np.array([1.0, -2.0]), np.array([0.5, 0.5])
    opt = get_optimizer("hf-lm", lr=1.0)                   # damping 1, decay 0.99
    assert opt.init(w)["damping"] == 1.0
    prob = UnderestimatedQuadratic(H, b, s=0.01)
    rho = hf_lm_rho_by_hand(prob, w, 1.0, 1.0)
    assert rho < 0.25
    _, state, info = opt.step(prob, w, opt.init(w), None)
    assert info["rho"] == pytest.approx(rho, rel=1e-8)
    assert state["damping"] == 1.0

    opt = get_optimizer("hf-lm", lr=1.0, damping=1e-3)
    prob = UnderestimatedQuadratic(H, b, s=1.0)
    rho = hf_lm_rho_by_hand(prob, w, 1e-3, 1.0)
    assert rho > 0.75
    _, state, info = opt.step(prob, w, opt.init(w), None)
    assert info["rho"] == pytest.approx(rho, rel=1e-8)
    assert state["damping"] == 1e-3


def test_hf_lm_damping_min_is_a_floor():
    """A user damping_min is the lower clip of λ: ρ > 3/4 at λ = damping_min = 0.05
    leaves λ = 0.05; above the floor (λ = 0.2) the step multiplies λ by decay."""
    H, b, w = np.diag([10.0, 20.0]), np.array([1.0, -2.0]), np.array([0.5, 0.5])
    prob = UnderestimatedQuadratic(H, b, s=1.0)
    for lam, expect in ((0.05, 0.05), (0.2, 0.1)):
        assert hf_lm_rho_by_hand(prob, w, lam, 1.0) > 0.75
        opt = get_optimizer("hf-lm", lr=1.0, damping=lam, decay=0.5, damping_min=0.05)
        _, state, _ = opt.step(prob, w, opt.init(w), None)
        assert state["damping"] == pytest.approx(expect, rel=1e-15)


def test_hf_lm_zero_gradient_keeps_damping():
    """At a stationary point g = 0, so d = 0 and q = 0: ρ is defined as 1/2 and
    λ must not move (METHODS: "ρ = 0.5 if q = 0"); w stays put."""
    H, b = np.diag([1.0, 2.0]), np.array([1.0, -2.0])
    w = np.array([1.0, -1.0])                       # H w = b exactly
    prob = UnderestimatedQuadratic(H, b, s=1.0)
    opt = get_optimizer("hf-lm", lr=1.0, damping=0.1, decay=0.9)
    w1, state, info = opt.step(prob, w, opt.init(w), None)
    assert info["rho"] == 0.5 and state["damping"] == 0.1
    np.testing.assert_array_equal(w1, w)


def test_martens_armijo_condition_subtracts_the_decrease():
    """Armijo accepts l(w − αx) ≤ l(w) − c α gᵀx.  With c = 1/2 on the problem of
    test_martens_armijo_line_search_and_lm: q(−100α + 5000α²) ≤ −50 α q ⇔ α ≤ 0.01,
    so α = 0.8²¹ = 0.00922 (0.8²⁰ = 0.01153 fails) after 22 evaluations;
    '+ c α gᵀx' would accept 0.8¹⁶ = 0.0281."""
    H = np.diag([1.0, 3.0])
    prob = UnderestimatedQuadratic(H, np.array([1.0, -2.0]), s=0.01)
    opt = get_optimizer("martens-hf", damping=1e-12, armijo_c=0.5)
    w = np.array([0.5, 0.5])
    w1, state, info = opt.step(prob, w, opt.init(w), None)
    assert info["alpha"] == pytest.approx(0.8 ** 21, rel=1e-12)
    assert info["line_search_tries"] == 22
    x = 100 * np.linalg.solve(H, H @ w - prob.b)
    np.testing.assert_allclose(w1, w - 0.8 ** 21 * x, rtol=1e-6)


def test_martens_armijo_last_try_is_taken():
    """armijo_tries counts loss evaluations, the last one included: the problem
    above (c = 1e-2) accepts α = 0.8¹⁸ on evaluation 19, so 19 tries step and
    18 tries give up (α = 0, w unchanged)."""
    H = np.diag([1.0, 3.0])
    w = np.array([0.5, 0.5])
    x = 100 * np.linalg.solve(H, H @ w - np.array([1.0, -2.0]))
    prob = UnderestimatedQuadratic(H, np.array([1.0, -2.0]), s=0.01)
    opt = get_optimizer("martens-hf", damping=1e-12, armijo_tries=19)
    w1, _, info = opt.step(prob, w, opt.init(w), None)
    assert info["alpha"] == pytest.approx(0.8 ** 18, rel=1e-12)
    assert info["line_search_tries"] == 19
    np.testing.assert_allclose(w1, w - 0.8 ** 18 * x, rtol=1e-6)
    opt = get_optimizer("martens-hf", damping=1e-12, armijo_tries=18)
    w1, _, info = opt.step(prob, w, opt.init(w), None)
    assert info["alpha"] == 0.0 and info["line_search_tries"] == 18
    np.testing.assert_array_equal(w1, w)


def test_martens_backtracking_walks_back_several_iterates():
    """Backtracking keeps walking while the earlier iterate is better: losses
    falling two saves back stop at the second (11 → 9 → 7), falling all the way
    reach the first save."""
    saved = [(5, np.array([5.0]), -1.0), (7, np.array([7.0]), -2.0),
             (9, np.array([9.0]), -3.0), (11, np.array([11.0]), -4.0)]
    losses = {5: 3.0, 7: 1.0, 9: 1.5, 11: 1.7}
    i, x, phi, f = backtrack(saved, lambda x: losses[int(x[0])])
    assert (i, x[0], phi, f) == (7, 7.0, -2.0, 1.0)
    losses = {5: 0.5, 7: 1.0, 9: 1.5, 11: 1.7}
    i, x, phi, f = backtrack(saved, lambda x: losses[int(x[0])])
    assert (i, x[0], phi, f) == (5, 5.0, -1.0, 0.5)


class RecordingQuadratic(UnderestimatedQuadratic):
    """Also keeps a copy of every vector the curvature product is applied to."""

    def __init__(self, *args):
        super().__init__(*args)
        self.products = []

    def gvp(self, lin, v, damping=None):
        self.products.append(v.copy())
        return super().gvp(lin, v, damping)


def ill_conditioned_quadratic():
    """f = ½ wᵀHw − bᵀw, H = diag(10^(3k/29)), k = 0..29, curvature underestimated
    100×: Martens' stopping rule ends CG (at i = 24) well before it converges, and
    every CG iterate is longer, so worse, than the one before."""
    H = np.diag(np.logspace(0, 3, 30))
    b = np.linspace(-1.0, 1.0, 30)
    return RecordingQuadratic(H, b, 0.01), np.full(30, 0.3)


def textbook_cg(A, b, iters):
    """Plain CG from x = 0 (Hestenes & Stiefel), ``iters`` iterations."""
    x, r = np.zeros_like(b), b.copy()
    p = r.copy()
    for _ in range(iters):
        Ap = A @ p
        alpha = (r @ r) / (p @ Ap)
        x, r_new = x + alpha * p, r - alpha * Ap
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return x


def test_martens_state_keeps_the_last_cg_iterate():
    """The warm-start state is the last CG iterate (section 4.5), not the one
    backtracking chose: here backtracking picks an earlier save, while state x
    is CG's final iterate on (sH + λI) x = g (checked against textbook CG)."""
    prob, w = ill_conditioned_quadratic()
    lam = 1e-3
    opt = get_optimizer("martens-hf", damping=lam)
    _, state, info = opt.step(prob, w, opt.init(w), None)
    n = int(info["cg_iters"])
    assert info["cg_chosen"] < n
    x_last = textbook_cg(prob.s * prob.H + lam * np.eye(30), prob.H @ w - prob.b, n)
    x_chosen = textbook_cg(prob.s * prob.H + lam * np.eye(30), prob.H @ w - prob.b,
                           int(info["cg_chosen"]))
    assert np.linalg.norm(x_last - x_chosen) > 0.1 * np.linalg.norm(x_last)
    # (24 iterations at condition number 10³ lose orthogonality: rounding differs ~1e-4;
    # the previous iterate, 23, is 1e-2 away)
    assert np.linalg.norm(state["x"] - x_last) < 1e-3 * np.linalg.norm(x_last)


def test_martens_warm_start_is_095_of_the_last_iterate():
    """Martens' default warm start (2010, section 4.5; METHODS): the second step's CG
    starts from 0.95 × the previous last iterate, so its first product is with it."""
    prob, w = ill_conditioned_quadratic()
    opt = get_optimizer("martens-hf", damping=1e-3)
    w1, state, _ = opt.step(prob, w, opt.init(w), None)
    x_prev = state["x"].copy()
    assert np.abs(x_prev).max() > 0
    prob.products.clear()
    opt.step(prob, w1, state, None)
    np.testing.assert_allclose(prob.products[0], 0.95 * x_prev, rtol=1e-15)
