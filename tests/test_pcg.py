"""PCG (MLHF supplement, Algorithm 1) and its reverse-mode backward pass, float64."""
import numpy as np
import pytest

from hfmeta import curvature
from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.losses import SoftmaxCrossEntropy
from hfmeta.pcg import pcg, pcg_backward
from test_curvature import tiny_problem

TINY = 1e-300  # floors that never fire: plain textbook PCG


def spd(d, seed=0, cond_scale=None, shift=0.1):
    """A random SPD matrix ``M Mᵀ/d + shift·I``; ``cond_scale`` rescales rows/columns by 10^U(-k, k)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((d, d))
    A = M @ M.T / d + shift * np.eye(d)
    if cond_scale:
        D = 10.0 ** rng.uniform(-cond_scale, cond_scale, d)
        A = D[:, None] * A * D[None, :]
    return A


def test_identity_preconditioner_and_n_equal_dimension_is_exact():
    """Exact in d steps up to rounding.  (In floating point CG loses conjugacy at a
    rate growing with the condition number: cond 40 already leaves ~1e-9 after d
    steps, so the matrix here is well conditioned, cond ≈ 4.)"""
    d = 12
    A = spd(d, shift=1.0)
    rng = np.random.default_rng(1)
    b, x0 = rng.standard_normal(d), rng.standard_normal(d)
    res = pcg(lambda v: A @ v, b, x0, None, n=d, curvature_floor=TINY, rho_floor=TINY)
    err = rel_error(res.x, np.linalg.solve(A, b))
    print(f"n = d = {d}: |x - A⁻¹b| / |A⁻¹b| = {err:.1e}, |r| = {res.residual_norm:.1e}")
    assert err < 1e-13
    assert res.products == d + 1 and res.iterations == d and res.guards == ()
    np.testing.assert_allclose(res.r, b - A @ res.x, atol=1e-12)


def test_jacobi_preconditioner_needs_fewer_iterations():
    d = 40
    A = spd(d, seed=2, cond_scale=2)
    b = np.random.default_rng(3).standard_normal(d)
    eps = 1e-8 * np.linalg.norm(b)
    plain = pcg(lambda v: A @ v, b, None, None, n=10 * d, eps=eps, curvature_floor=TINY,
                rho_floor=TINY)
    jacobi = pcg(lambda v: A @ v, b, None, np.diag(A).copy(), n=10 * d, eps=eps,
                 curvature_floor=TINY, rho_floor=TINY)
    print(f"cond(A) = {np.linalg.cond(A):.1e}: iterations to |r| < {eps:.1e}: "
          f"P = I {plain.iterations}, Jacobi {jacobi.iterations}")
    assert jacobi.residual_norm < eps
    assert jacobi.iterations < plain.iterations / 2


def test_diagonal_preconditioner_from_the_solution_is_exact_in_one_step():
    """With e = A⁻¹ r_0 the correction PCG must find, P = r_0 ⊘ e gives y_0 = e,
    α_0 = ⟨r_0, e⟩ / ⟨e, A e⟩ = 1, so x_1 = x_0 + e = A⁻¹b: a diagonal P can make
    a solve exact in one iteration, but only by knowing its solution (and only
    where every r_0,i e_i > 0, as a positive P needs).  This is why a per-solve
    oracle P (docs/mlhf_probe.py, section 6) closes most of the n = 4 vs n = 20
    gap.  Here A has positive entries and e > 0, so r_0 = A e > 0 too."""
    d = 30
    rng = np.random.default_rng(4)
    M = rng.uniform(0.0, 1.0, (d, d))
    A = M @ M.T / d + 0.1 * np.eye(d)                 # SPD with positive entries
    x_true = rng.standard_normal(d)
    b = A @ x_true
    e = rng.uniform(0.1, 2.0, d)                      # the correction, through the start
    x0 = x_true - e
    P = (b - A @ x0) / e
    assert np.all(P > 0)
    one = pcg(lambda v: A @ v, b, x0, P, n=1, curvature_floor=TINY, rho_floor=TINY)
    plain = pcg(lambda v: A @ v, b, x0, None, n=1, curvature_floor=TINY, rho_floor=TINY)
    print(f"one iteration: |x - A⁻¹b| / |A⁻¹b| = {rel_error(one.x, x_true):.1e} with "
          f"P = r_0 ⊘ e, {rel_error(plain.x, x_true):.1e} with P = I")
    np.testing.assert_allclose(one.alphas[0], 1.0, rtol=1e-12)
    assert rel_error(one.x, x_true) < 1e-12
    assert rel_error(plain.x, x_true) > 1e-3


def test_stopping_rule_and_product_count():
    A = spd(8)
    b = np.random.default_rng(4).standard_normal(8)
    res = pcg(lambda v: A @ v, b, np.zeros(8), None, n=4)
    assert res.iterations == 4 and res.products == 5 and len(res.alphas) == 4
    exact = pcg(lambda v: A @ v, b, None, None, n=50, eps=1e-9, curvature_floor=TINY,
                rho_floor=TINY)
    assert exact.iterations <= 8 + 2 and exact.residual_norm < 1e-9
    assert exact.products == exact.iterations       # x0 = None: no product for r_0
    done = pcg(lambda v: A @ v, b, np.linalg.solve(A, b), None, n=4, eps=1e-6)
    assert done.iterations == 0 and done.products == 1


def test_guards_report_instead_of_nan():
    A = np.diag([1.0, -2.0, 3.0])                    # indefinite
    b = np.array([0.0, 1.0, 0.0])
    res = pcg(lambda v: A @ v, b, None, None, n=3)
    assert "non-positive curvature" in res.guards
    assert np.all(np.isfinite(res.x))
    res = pcg(lambda v: 1e-9 * v, np.ones(3), None, None, n=2)   # tiny curvature and ρ
    assert res.guards == ("zero denominator",) and np.all(np.isfinite(res.x))
    with pytest.raises(ValueError):
        pcg(lambda v: v, np.ones(3), None, None, curvature_floor=0.0)


def _check_backward(apply_G, d, n, seed, directions=None, **floors):
    """Relative error of the PCG backward against central differences of
    L = ⟨x̄, x_n⟩ + ⟨r̄, r_n⟩ in (s, P, b, x0): every coordinate, or (for a
    network GGN) ``directions`` random unit directions within each of the four blocks."""
    rng = np.random.default_rng(seed)
    s, P = 0.1 + rng.random(d), 0.5 + rng.random(d)
    b, x0 = rng.standard_normal(d), rng.standard_normal(d)
    x_bar, r_bar = rng.standard_normal(d), rng.standard_normal(d)
    apply_A = lambda v: apply_G(v) + s * v  # noqa: E731
    res = pcg(apply_A, b, x0, P, n, **floors)
    g = pcg_backward(res, apply_A, x_bar, r_bar)
    analytic = np.concatenate([g["s"], g["P"], g["b"], g["x0"]])

    def L(theta):
        s_, P_, b_, x0_ = np.split(theta, 4)
        out = pcg(lambda v: apply_G(v) + s_ * v, b_, x0_, P_, n, **floors)
        return np.array([x_bar @ out.x + r_bar @ out.r])

    theta = np.concatenate([s, P, b, x0])
    if directions is None:
        E = np.eye(4 * d)
    else:
        E = np.zeros((4 * directions, 4 * d))
        for k in range(4 * directions):
            block = slice((k // directions) * d, (k // directions + 1) * d)
            E[k, block] = rng.standard_normal(d)
            E[k] /= np.linalg.norm(E[k])
    fd = np.array([central_difference(L, theta, e, 1e-5)[0] for e in E])
    return rel_error(E @ analytic, fd), res


@pytest.mark.parametrize("n", [1, 2, 4])
def test_backward_matches_finite_differences_explicit_matrix(n):
    G = spd(7, seed=5) - 0.1 * np.eye(7)
    err, res = _check_backward(lambda v: G @ v, 7, n, seed=n)
    print(f"explicit G, n = {n}: rel. error {err:.1e}")
    assert res.guards == () and err < 1e-8


@pytest.mark.parametrize("n", [1, 2, 4])
def test_backward_matches_finite_differences_network_ggn(n):
    model, w, x, y, _ = tiny_problem("cnn")
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)
    err, res = _check_backward(lambda v: curvature.gvp(lin, loss, v), w.size, n, seed=10 + n,
                               directions=3)
    print(f"cnn GGN ({w.size} params), n = {n}: rel. error {err:.1e}")
    assert res.guards == () and err < 1e-8


def test_backward_through_active_guards():
    """With floors above the true denominators the gradient follows the floor branch."""
    G = spd(5, seed=6)
    err, res = _check_backward(lambda v: G @ v, 5, 3, seed=7, curvature_floor=1e3, rho_floor=1e3)
    assert res.guards == ("zero denominator",)
    assert err < 1e-8


def test_backward_selected_outputs_and_zero_start():
    G = spd(6, seed=8)
    rng = np.random.default_rng(9)
    s, b, x_bar = 0.2 + rng.random(6), rng.standard_normal(6), rng.standard_normal(6)
    apply_A = lambda v: G @ v + s * v  # noqa: E731
    res = pcg(apply_A, b, None, None, n=3)
    g = pcg_backward(res, apply_A, x_bar, None, need=("s", "x0"))
    assert set(g) == {"s", "x0"}
    full = pcg_backward(pcg(apply_A, b, np.zeros(6), None, n=3), apply_A, x_bar, None,
                        need=("s", "x0"))
    np.testing.assert_allclose(g["s"], full["s"], rtol=1e-12)
    np.testing.assert_allclose(g["x0"], full["x0"], rtol=1e-12)
    with pytest.raises(ValueError):
        pcg_backward(res, apply_A, x_bar, None, need=("P",))
    with pytest.raises(ValueError):
        pcg_backward(pcg(apply_A, b, None, None, n=3, record=False), apply_A, x_bar)


def test_gpu_curvature_diagonals_and_pcg_match_cpu(gpu):
    """One code path: the CuPy run of every curvature routine equals the NumPy run."""
    from hfmeta import backend, diagonal
    from hfmeta.model import Model
    from test_curvature import CLASSES, _net

    model, w, x, y, _ = tiny_problem("cnn-bn")
    net, in_shape = _net("cnn-bn")
    gpu_model = Model(net, in_shape, CLASSES, dtype="float64", device="gpu")
    to_gpu = lambda a: backend.to_device(a, "gpu")  # noqa: E731
    loss = SoftmaxCrossEntropy()
    lin_c, lin_g = model.linearize(w, x), gpu_model.linearize(to_gpu(w), to_gpu(x))
    rng = np.random.default_rng(0)
    v, s = rng.standard_normal(w.size), 0.1 + rng.random(w.size)

    def same(cpu, gpu):
        assert rel_error(cpu, backend.asnumpy(gpu)) < 1e-12

    same(curvature.gvp(lin_c, loss, v), curvature.gvp(lin_g, loss, to_gpu(v)))
    same(curvature.hvp(lin_c, loss, y, v), curvature.hvp(lin_g, loss, to_gpu(y), to_gpu(v)))
    same(diagonal.exact_diag_ggn(lin_c, loss), diagonal.exact_diag_ggn(lin_g, loss))
    same(diagonal.becker_lecun_diag(lin_c, loss), diagonal.becker_lecun_diag(lin_g, loss))
    same(diagonal.hutchinson_diag(lin_c, loss, 3, np.random.default_rng(1)),
         diagonal.hutchinson_diag(lin_g, loss, 3, np.random.default_rng(1)))
    A_c = curvature.operator(lin_c, loss, s)
    A_g = curvature.operator(lin_g, loss, to_gpu(s))
    P, b = 0.5 + rng.random(w.size), rng.standard_normal(w.size)
    res_c = pcg(A_c, b, v, P, 4)
    res_g = pcg(A_g, to_gpu(b), to_gpu(v), to_gpu(P), 4)
    same(res_c.x, res_g.x)
    same(res_c.r, res_g.r)
    grads_c = pcg_backward(res_c, A_c, b, v)
    grads_g = pcg_backward(res_g, A_g, to_gpu(b), to_gpu(v))
    for key in ("s", "P", "b", "x0"):
        same(grads_c[key], grads_g[key])
