"""Coordinate-wise LSTM: BPTT, preprocessing and the LSTM bank against finite differences (float64)."""
import json
import math

import numpy as np
import pytest

from hfmeta import backend
from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.meta import (CoordinateLSTM, Log, LogSign, LSTMBank, Scale, Softplus, Tanh,
                         build_inputs, inputs_backward)

N_ROWS, T = 3, 3


# ----------------------------------------------------------------------------
# an unroll as a scalar function of (theta, x_1..x_T, initial state)
# ----------------------------------------------------------------------------
class Unroll:
    """``loss = Σ_t <U_t, out_t> + Σ_l <A_l, h_T> + <B_l, c_T>`` over T steps.

    All inputs are packed in one flat vector ``z = [theta, x_1..x_T, (h0, c0) per layer]``.
    ``skip`` lists steps whose output has no cotangent (U_t = 0, passed as None).
    """

    def __init__(self, lstm, seed=0, skip=(), final_state=True):
        rng = np.random.default_rng(seed)
        self.lstm, self.skip, self.final_state = lstm, set(skip), final_state
        theta = lstm.init(rng) + 0.3 * rng.standard_normal(lstm.size)   # no special point
        xs = rng.standard_normal((T, N_ROWS, lstm.n_inputs))
        state0 = [(0.5 * rng.standard_normal((N_ROWS, h)), rng.standard_normal((N_ROWS, h)))
                  for h in lstm.hidden]
        self.z0 = np.concatenate([theta, xs.ravel()] + [a.ravel() for hc in state0 for a in hc])
        self.U = [None if t in self.skip else rng.standard_normal((N_ROWS, lstm.n_outputs))
                  for t in range(T)]
        self.AB = [(rng.standard_normal((N_ROWS, h)), rng.standard_normal((N_ROWS, h)))
                   for h in lstm.hidden] if final_state else None

    def unpack(self, z):
        lstm, k = self.lstm, self.lstm.size
        theta = z[:k]
        nx = T * N_ROWS * lstm.n_inputs
        xs = z[k:k + nx].reshape(T, N_ROWS, lstm.n_inputs)
        k += nx
        state = []
        for h in lstm.hidden:
            m = N_ROWS * h
            state.append((z[k:k + m].reshape(N_ROWS, h), z[k + m:k + 2 * m].reshape(N_ROWS, h)))
            k += 2 * m
        return theta, xs, state

    def run(self, z):
        theta, xs, state = self.unpack(z)
        loss, caches = 0.0, []
        for t in range(T):
            out, state, cache = self.lstm.step(theta, state, xs[t])
            caches.append(cache)
            if self.U[t] is not None:
                loss += float((self.U[t] * out).sum())
        if self.final_state:
            loss += sum(float((a * h).sum() + (b * c).sum()) for (a, b), (h, c) in zip(self.AB, state))
        return loss, caches

    def loss(self, z):
        return np.array([self.run(z)[0]])

    def gradient(self, z):
        theta, _, _ = self.unpack(z)
        _, caches = self.run(z)
        d_theta, d_xs, d_state0 = self.lstm.backward(theta, caches, self.U, self.AB)
        return np.concatenate([d_theta] + [dx.ravel() for dx in d_xs]
                              + [a.ravel() for hc in d_state0 for a in hc])


def finite_difference_gradient(f, z0, coords=None, h=1e-5):
    """Central differences of the scalar ``f`` at ``z0``, at ``coords`` (default: all)."""
    coords = range(z0.size) if coords is None else coords
    e = np.zeros_like(z0)
    g = np.empty(len(coords))
    for k, j in enumerate(coords):
        e[j] = 1.0
        g[k] = central_difference(f, z0, e, h)[0]
        e[j] = 0.0
    return g


@pytest.mark.parametrize("hidden", [(4,), (4, 3), (3, 4, 2)])
def test_bptt_matches_finite_differences(hidden):
    """d/d theta, d/d x_t at every step and d/d initial state; all coordinates."""
    lstm = CoordinateLSTM(n_inputs=2, hidden=hidden, n_outputs=2)
    unroll = Unroll(lstm, seed=len(hidden))
    g = unroll.gradient(unroll.z0)
    fd = finite_difference_gradient(unroll.loss, unroll.z0)
    k, nx = lstm.size, T * N_ROWS * lstm.n_inputs
    for part, sl in [("theta", slice(0, k)), ("inputs", slice(k, k + nx)), ("state0", slice(k + nx, None))]:
        assert rel_error(g[sl], fd[sl]) < 1e-9, part


def test_bptt_over_several_row_blocks(monkeypatch):
    """The cached step runs over blocks of CHUNK rows, writing each block's zᵀ and
    states into full-width arrays that the backward reads: 2 blocks of 2 + 1 rows."""
    monkeypatch.setattr(CoordinateLSTM, "CHUNK", 2)
    lstm = CoordinateLSTM(n_inputs=2, hidden=(4, 3), n_outputs=2)
    unroll = Unroll(lstm, seed=11)
    assert N_ROWS > CoordinateLSTM.CHUNK and N_ROWS % CoordinateLSTM.CHUNK
    assert rel_error(unroll.gradient(unroll.z0), finite_difference_gradient(unroll.loss, unroll.z0)) < 1e-9


@pytest.mark.parametrize("skip,final_state", [((1,), True), ((0, 2), False)])
def test_bptt_with_missing_cotangents(skip, final_state):
    """Steps without an output cotangent (None) and no final-state cotangent."""
    unroll = Unroll(CoordinateLSTM(3, (4, 4), 1), seed=5, skip=skip, final_state=final_state)
    assert rel_error(unroll.gradient(unroll.z0), finite_difference_gradient(unroll.loss, unroll.z0)) < 1e-9


def test_gradcheck_detects_a_wrong_gate_derivative(monkeypatch):
    """The BPTT test can fail: a wrong forget-gate derivative is caught."""
    lstm = CoordinateLSTM(2, (3,), 1)
    unroll = Unroll(lstm, seed=1)
    original = lstm._layer_backward

    def broken(xp, p, dp, l, cache, dh, dc):
        dz, dc_prev = original(xp, p, dp, l, cache, dh, dc)
        return dz, 1.01 * dc_prev
    monkeypatch.setattr(lstm, "_layer_backward", broken)
    assert rel_error(unroll.gradient(unroll.z0), finite_difference_gradient(unroll.loss, unroll.z0)) > 1e-4


def test_interleaved_backward_steps_equal_full_backward():
    lstm = CoordinateLSTM(3, (4, 4), 1)
    unroll = Unroll(lstm, seed=2)
    theta, _, _ = unroll.unpack(unroll.z0)
    _, caches = unroll.run(unroll.z0)
    d_theta_full, d_xs_full, d_state_full = lstm.backward(theta, caches, unroll.U, unroll.AB)
    d_theta, d_state = np.zeros(lstm.size), unroll.AB
    for t in reversed(range(T)):
        part, d_x, d_state = lstm.backward_step(theta, caches[t], unroll.U[t], d_state)
        d_theta += part
        np.testing.assert_allclose(d_x, d_xs_full[t], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d_theta, d_theta_full, rtol=1e-12, atol=1e-15)
    for (h, c), (h_full, c_full) in zip(d_state, d_state_full):
        np.testing.assert_allclose(h, h_full, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c, c_full, rtol=1e-13, atol=1e-15)


def test_layout_init_and_dtype():
    lstm = CoordinateLSTM(3, (4, 4), 1)
    assert lstm.size == 277               # MLHF: "about 277 parameters" per kind and RNN
    theta = lstm.init(np.random.default_rng(0), dtype=np.float32)
    p = lstm.views(theta)
    assert p["layer0.weight"].shape == (16, 7) and p["layer1.weight"].shape == (16, 8)
    np.testing.assert_array_equal(p["layer1.bias"], np.repeat([0, 1, 0, 0], 4))   # i, f, g, o
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    out, state, cache = lstm.step(theta, lstm.zero_state(5, np, np.float32), x)
    assert out.dtype == np.float32 and state[1][0].dtype == np.float32
    assert all(a.dtype == np.float32 for layer in cache for a in layer)
    d_theta, d_x, _ = lstm.backward_step(theta, cache, np.ones_like(out), None)
    assert d_theta.dtype == np.float32 and d_x.dtype == np.float32


def test_gates_match_textbook_sigmoid():
    """The one-tanh forward (σ(a) = (1 + tanh(a/2))/2) equals the plain formulas."""
    rng = np.random.default_rng(3)
    lstm = CoordinateLSTM(2, (3,), 1)
    theta = lstm.init(rng) + 0.5 * rng.standard_normal(lstm.size)
    x, h0, c0 = rng.standard_normal((4, 2)), rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    out, [(h, c)], _ = lstm.step(theta, [(h0, c0)], x)
    p = lstm.views(theta)
    a = np.concatenate([x, h0], 1) @ p["layer0.weight"].T + p["layer0.bias"]
    sig = lambda v: 1 / (1 + np.exp(-v))      # noqa: E731
    i, f, g, o = sig(a[:, :3]), sig(a[:, 3:6]), np.tanh(a[:, 6:9]), sig(a[:, 9:])
    np.testing.assert_allclose(c, f * c0 + i * g, rtol=1e-13)
    np.testing.assert_allclose(h, o * np.tanh(c), rtol=1e-13)
    np.testing.assert_allclose(out, h @ p["out.weight"].T + p["out.bias"], rtol=1e-13)


# ----------------------------------------------------------------------------
# preprocessing and post-processing
# ----------------------------------------------------------------------------
LOGSIGN_POINTS = np.array([-3.0, -0.2, -1e-3, -2e-5, -1e-6, 0.0, 3e-6, 1e-5, 4e-5, 5e-5, 0.01, 0.7, 50.0])
LOG_POINTS = np.array([1e-9, 1e-6, 1e-4, 0.03, 1.0, 20.0])


def _elementwise_derivatives(f, v, scale, kinks):
    """Central differences of an elementwise map, one step size per element.

    The step is 1e-3 of the element's own scale (``max(|v|, scale)``) but at most
    a fifth of its distance to the nearest kink, so no stencil crosses one.
    """
    to_kink = np.min([np.abs(v - k) for k in kinks], axis=0) if kinks else np.inf
    step = np.minimum(1e-3 * np.maximum(np.abs(v), scale), 0.2 * to_kink)
    return central_difference(f, v, step, 1.0) / step[:, None]


THRESHOLD = np.exp(-10.0)


@pytest.mark.parametrize("pre,v,scale,kinks", [
    (Tanh(), np.linspace(-4, 4, 11), 1.0, []),
    (LogSign(10.0), LOGSIGN_POINTS, THRESHOLD, [-THRESHOLD, THRESHOLD]),
    (LogSign(5.0), np.array([-0.5, -1e-3, 1e-3, 0.02]), np.exp(-5.0), [-np.exp(-5.0), np.exp(-5.0)]),
    (Log(10.0), LOG_POINTS, THRESHOLD, [0.0])])
def test_preprocess_derivatives(pre, v, scale, kinks):
    def f(vec):
        return pre.forward(vec, np.empty((vec.size, pre.n_features)))
    d_feat = np.random.default_rng(0).standard_normal((v.size, pre.n_features))
    expected = (_elementwise_derivatives(f, v, scale, kinks) * d_feat).sum(1)
    assert rel_error(pre.backward(v, d_feat), expected) < 1e-9


def test_logsign_values_and_log_clamp():
    feats = LogSign(10.0).forward(np.array([np.e ** 2, -1.0, 1e-5, 0.0]), np.empty((4, 2)))
    np.testing.assert_allclose(feats, [[0.2, 1], [0, -1], [-1, 1e-5 * np.e ** 10], [-1, 0]])
    pre = Log(10.0)
    np.testing.assert_allclose(pre.forward(np.array([0.0, -3.0]), np.empty((2, 1)))[:, 0], [-1, -1])
    np.testing.assert_array_equal(pre.backward(np.array([-3.0]), np.ones((1, 1))), [0.0])


def test_build_inputs_and_backward():
    rng = np.random.default_rng(4)
    pres = [LogSign(), Log(), Tanh()]
    vecs = [rng.standard_normal(6), rng.random(6) + 0.1, rng.standard_normal(6)]
    x = build_inputs(pres, vecs)
    assert x.shape == (6, 4)
    np.testing.assert_allclose(x[:, 3], np.tanh(vecs[2]))
    d_x = rng.standard_normal((6, 4))
    grads = inputs_backward(pres, vecs, d_x)
    for k, (pre, col) in enumerate(zip(pres, [slice(0, 2), slice(2, 3), slice(3, 4)])):
        np.testing.assert_allclose(grads[k], pre.backward(vecs[k], d_x[:, col]))


@pytest.mark.parametrize("post", [Softplus(), Scale(0.1)])
def test_postprocess_derivatives(post):
    y = np.array([-40.0, -5.0, -0.3, 0.0, 0.2, 3.0, 40.0])
    d_out = np.random.default_rng(1).standard_normal(y.size)
    fd = central_difference(post.forward, y, d_out, 1e-5)   # elementwise: J d_out = Jᵀ d_out
    assert rel_error(post.backward(y, d_out), fd) < 1e-9


def test_softplus_is_stable():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = Softplus().forward(np.array([-1000.0, 0.0, 1000.0]))
        ds = Softplus().backward(np.array([-1000.0, 1000.0]), np.ones(2))
    np.testing.assert_allclose(s, [0.0, np.log(2), 1000.0])
    np.testing.assert_allclose(ds, [0.0, 1.0])


# ----------------------------------------------------------------------------
# the bank: one LSTM per group
# ----------------------------------------------------------------------------
GROUPS = ("conv.weight", "fc.weight", "bn.gamma")
ROWS = {"conv.weight": slice(0, 4), "fc.weight": slice(4, 9), "bn.gamma": slice(9, 11)}


def _bank_point(seed=0):
    rng = np.random.default_rng(seed)
    bank = LSTMBank({"conv.weight": CoordinateLSTM(3, (4, 4)), "fc.weight": CoordinateLSTM(3, (4, 4)),
                     "bn.gamma": CoordinateLSTM(3, (2,))})
    theta = bank.init(rng) + 0.2 * rng.standard_normal(bank.size)
    xs = rng.standard_normal((T, 12, 3))      # row 11 belongs to no group
    return bank, theta, xs


def _bank_unroll(bank, theta, xs):
    states, outs, caches = bank.zero_state(ROWS), [], []
    for t in range(T):
        out, states, cache = bank.step(theta, states, xs[t], ROWS)
        outs.append(out)
        caches.append(cache)
    return outs, caches


def test_bank_routes_rows_to_their_own_group():
    bank, theta, xs = _bank_point()
    outs, _ = _bank_unroll(bank, theta, xs)
    assert np.all(outs[-1][11] == 0)                       # rows outside every group
    for name in GROUPS:
        bumped = theta.copy()
        bumped[bank.theta_slices[name]] += 0.1
        outs2, _ = _bank_unroll(bank, bumped, xs)
        changed = np.abs(outs2[-1] - outs[-1])[:, 0] > 0
        expected = np.zeros(12, bool)
        expected[ROWS[name]] = True
        np.testing.assert_array_equal(changed, expected)
    # each group's rows are exactly its own LSTM on its own rows
    for name, lstm in bank.lstms.items():
        th = theta[bank.theta_slices[name]]
        state = lstm.zero_state(ROWS[name].stop - ROWS[name].start)
        for t in range(T):
            out, state, _ = lstm.step(th, state, xs[t][ROWS[name]])
        np.testing.assert_array_equal(out, outs[-1][ROWS[name]])


def test_bank_backward_consume_gives_the_same_gradient_and_frees_the_caches():
    bank, theta0, xs = _bank_point(1)
    U = list(np.random.default_rng(2).standard_normal((T, 12, 1)))
    _, caches = _bank_unroll(bank, theta0, xs)
    d_theta = bank.backward(theta0, caches, U, ROWS)[0]
    d_outs = list(U)
    d_consumed, d_xs, _ = bank.backward(theta0, caches, d_outs, ROWS, consume=True)
    np.testing.assert_array_equal(d_consumed, d_theta)
    assert caches == [None] * T and d_outs == [None] * T and d_xs == [None] * T


def test_bank_bptt_matches_finite_differences():
    bank, theta0, xs = _bank_point(1)
    U = np.random.default_rng(2).standard_normal((T, 12, 1))

    def loss(theta):
        outs, _ = _bank_unroll(bank, theta, xs)
        return np.array([sum((u * o).sum() for u, o in zip(U, outs))])
    _, caches = _bank_unroll(bank, theta0, xs)
    d_theta, d_xs, _ = bank.backward(theta0, caches, list(U), ROWS)
    rng = np.random.default_rng(3)         # 30 coordinates of each group's theta
    coords = np.concatenate([rng.choice(np.arange(sl.start, sl.stop), 30, replace=False)
                             for sl in bank.theta_slices.values()])
    assert rel_error(d_theta[coords], finite_difference_gradient(loss, theta0, coords)) < 1e-9
    assert np.all(d_xs[0][11] == 0)
    # interleaved steps equal the full backward
    d_acc, d_states = np.zeros(bank.size), None
    for t in reversed(range(T)):
        d_acc, d_x, d_states = bank.backward_step(theta0, caches[t], U[t], d_states, ROWS, d_acc)
        np.testing.assert_allclose(d_x, d_xs[t], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d_acc, d_theta, rtol=1e-13, atol=1e-15)


def test_bank_to_dict_round_trip():
    bank, theta, xs = _bank_point()
    d = bank.to_dict(theta)
    d["config"] = json.loads(json.dumps(d["config"]))       # must survive JSON (HDF5 attribute)
    bank2, theta2 = LSTMBank.from_dict(d)
    assert bank2.groups == bank.groups and bank2.size == bank.size
    np.testing.assert_array_equal(theta2, theta)
    np.testing.assert_array_equal(_bank_unroll(bank2, theta2, xs)[0][-1],
                                  _bank_unroll(bank, theta, xs)[0][-1])
    with pytest.raises(KeyError, match="no LSTM for group"):
        bank.step(theta, {}, xs[0], {"bn.beta": slice(0, 2)})


# ----------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------
def test_cupy_matches_numpy(gpu):
    cp = backend.xp_for("gpu")
    lstm = CoordinateLSTM(3, (4, 4), 1)
    rng = np.random.default_rng(7)
    theta = lstm.init(rng) + 0.2 * rng.standard_normal(lstm.size)
    xs = rng.standard_normal((T, 1000, 3))
    U = rng.standard_normal((T, 1000, 1))
    results = []
    for xp in (np, cp):
        th, state, caches, outs = xp.asarray(theta), lstm.zero_state(1000, xp), [], []
        for t in range(T):
            out, state, cache = lstm.step(th, state, xp.asarray(xs[t]))
            outs.append(backend.asnumpy(out))
            caches.append(cache)
        d_theta, d_xs, _ = lstm.backward(th, caches, [xp.asarray(u) for u in U])
        results.append((np.stack(outs), backend.asnumpy(d_theta), backend.asnumpy(d_xs[0])))
    for a, b in zip(*results):
        assert rel_error(a, b) < 1e-12
    pres = [LogSign(), Log(), Tanh()]
    v = rng.standard_normal(50)
    vecs = [v, np.abs(v), v]
    x_np = build_inputs(pres, vecs)
    x_cp = build_inputs(pres, [cp.asarray(a) for a in vecs])
    assert rel_error(x_np, x_cp) < 1e-12
    assert rel_error(Softplus().forward(v), Softplus().forward(cp.asarray(v))) < 1e-12


@pytest.mark.parametrize("chunk", [5, 4096], ids=str)
def test_step_without_cache_matches_cached_step(monkeypatch, chunk):
    """``keep_cache=False`` (inference: per-block zᵀ buffers) gives the outputs and
    states of the cached step, over several steps and row blocks,
    also with an F-ordered input from build_inputs and an output slice."""
    monkeypatch.setattr(CoordinateLSTM, "CHUNK", chunk)
    rng = np.random.default_rng(7)
    lstm = CoordinateLSTM(3, (4, 3), 1)
    theta = lstm.init(rng) + 0.3 * rng.standard_normal(lstm.size)
    n = 23
    states = {True: lstm.zero_state(n), False: lstm.zero_state(n)}
    for t in range(3):
        x = build_inputs([Tanh(), Tanh(), Tanh()], list(rng.standard_normal((3, n))))
        outs = {}
        for keep in (True, False):
            buf = np.zeros((n + 2, 1))
            outs[keep], states[keep], cache = lstm.step(theta, states[keep], x, out=buf[1:-1],
                                                        keep_cache=keep)
            assert (cache is None) == (not keep)
            assert buf[0, 0] == 0 and buf[-1, 0] == 0
        np.testing.assert_allclose(outs[True], outs[False], rtol=1e-13)
        for (h1, c1), (h2, c2) in zip(states[True], states[False]):
            np.testing.assert_allclose(h1, h2, rtol=1e-13)
            np.testing.assert_allclose(c1, c2, rtol=1e-13)
    bank = LSTMBank({"a": lstm})
    _, _, bank_cache = bank.step(theta, {"a": lstm.zero_state(n)}, x, {"a": slice(0, n)},
                                 keep_cache=False)
    assert bank_cache is None


def test_logsign_default_is_l2l_p_10():
    """LogSign() is L2L's preprocessing with p = 10 (Andrychowicz et al. 2016, appendix A):
    (log|x|/10, sign x) for |x| ≥ e^−10, else (−1, e^10·x).  1e-3 and −6e-3 lie between
    e^−10 and e^−5, so a default of p = 5 would put them on the other branch."""
    x = np.array([np.e ** 3, -np.e ** -4, 1e-3, -6e-3, 2e-5, -1e-6])
    expected = [[3 / 10, 1.0], [-4 / 10, -1.0],
                [math.log(1e-3) / 10, 1.0], [math.log(6e-3) / 10, -1.0],
                [-1.0, 2e-5 * math.exp(10)], [-1.0, -1e-6 * math.exp(10)]]
    np.testing.assert_allclose(LogSign().forward(x, np.empty((6, 2))), expected, rtol=1e-12)
