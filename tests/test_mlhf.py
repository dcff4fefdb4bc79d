"""MLHF: the meta-gradient of a short unroll against finite differences, inference, checkpoints."""
import copy
import math

import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.layers import BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from hfmeta.meta.mlhf import (MLHF, MLHFNets, clip_step, log_loss_ratio, mlhf_direction,
                              warm_start)
from hfmeta.meta.mlhf_train import CURVATURE_TINY, MetaTrainer, held_out_start, l_p_term, unroll
from hfmeta.model import Model
from hfmeta.params import KINDS
from hfmeta.problem import Problem


def tiny_bn_convnet(device="cpu"):
    """All six parameter kinds: conv weight/bias, fc weight/bias, BN gamma/beta."""
    net = Sequential([("conv1", Conv2d(2, 3, padding=1)), ("bn1", BatchNorm()), ("relu1", ReLU()),
                      ("pool1", MaxPool2d(2, 2)), ("flatten", Flatten()), ("fc1", Linear(4)),
                      ("bn2", BatchNorm()), ("relu2", ReLU()), ("fc2", Linear(3))])
    return Model(net, (1, 4, 4), 3, dtype="float64", device=device, name="tiny")


def _setup(T=3, use_rnn_p=True, clip=0.05, seed=0, inputs="tanh", loss_input=False,
           noise_draw="step"):
    model = tiny_bn_convnet()
    assert set(model.layout.kinds) == set(KINDS)
    problem = Problem(model)
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4)) for _ in range(T + 1)]
    nets = MLHFNets(use_rnn_p=use_rnn_p, n=4, inputs=inputs, loss_input=loss_input)
    theta = nets.init(seed) + 0.3 * rng.standard_normal(nets.size)   # a generic point
    rows = nets.rows(model.layout)
    states = nets.zero_states(rows, np, np.float64)
    # start mid-run: non-zero d_prev/r_prev and LSTM states, so every input path is live
    w = model.init(seed)
    d_prev = 0.01 * rng.standard_normal(model.num_params)
    r_prev = 0.01 * rng.standard_normal(model.num_params)
    for kind_states in states.values():
        for layers in kind_states.values():
            for h, c in layers:
                h[...] = 0.1 * rng.standard_normal(h.shape)
                c[...] = 0.1 * rng.standard_normal(c.shape)
    noise = [1.01, 0.985, 1.0, 0.99, 1.02][:T]
    if noise_draw == "coordinate":                   # the released code's: one per coordinate
        noise = [rng.uniform(0.98, 1.02, model.num_params) for _ in range(T)]
    return nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip


@pytest.mark.parametrize("inputs,restart,loss_input,noise_draw,ls_scale", [
    ("tanh", None, False, "step", 1.0),
    ("logsign", None, False, "step", 1.0),
    ("tanh", 1 + 1e-9, True, "step", 1.0),
    ("tanh", None, False, "coordinate", 0.5)])
def test_meta_gradient_matches_finite_differences_with_the_same_stop_gradients(
        inputs, restart, loss_input, noise_draw, ls_scale):
    """Issue 5 point 2: T = 3, tiny conv net with BN, float64, both RNNs with their own losses
    (with the paper's tanh inputs and with the L2L log/sign ones; with a PCG restart
    within the unroll, ratio 1 + 1e-9: any loss increase restarts, and RNN_s's loss input;
    and with the released code's per-coordinate step noise and half l_s)."""
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip = _setup(
        inputs=inputs, loss_input=loss_input, noise_draw=noise_draw)
    res = unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev, batches, rows,
                 clip=clip, noise=noise, restart=restart, ls_scale=ls_scale)
    cold = [t for t in range(1, len(batches) - 1) if res.frozen.d_prev[t] is None]
    assert bool(cold) == (restart is not None), "a restart within the unroll, when asked"
    scales = [min(1.0, clip * np.linalg.norm(wt) / np.linalg.norm(d))     # (d^t is d_0^{t+1}
              for wt, d in zip(res.frozen.w, res.frozen.d_prev[1:] + [res.d_prev])  # unless
              if d is not None]                                                 # restarted)
    assert min(scales) < 1.0, "the step clip should be active in this test"

    def losses(th):
        r = unroll(nets, th, problem, w, copy.deepcopy(states), d_prev, r_prev, batches, rows,
                   clip=clip, frozen=res.frozen, backward=False, ls_scale=ls_scale)
        return np.array([r.l_s, r.l_p])

    # the replay reproduces the run at theta
    np.testing.assert_allclose(losses(theta), [res.l_s, res.l_p], rtol=1e-12)
    # Step 1e-3: the meta-losses are O(1) while their derivatives along a unit
    # direction are O(1e-6) (RNN_p) to O(1e-3) (RNN_s), so rounding (ε|L|/h)
    # swamps smaller steps; the fourth-order stencil keeps truncation at O(h⁴).
    h = 1e-3
    rng = np.random.default_rng(5)
    n_s = nets.size_s
    errors = {}
    for which, part, index in (("l_s", slice(0, n_s), 0), ("l_p", slice(n_s, nets.size), 1)):
        fd, an = [], []
        for _ in range(3):                       # random directions within the RNN's block
            v = np.zeros(nets.size)
            v[part] = rng.standard_normal(part.stop - part.start)
            v /= np.linalg.norm(v)
            fd.append(central_difference(lambda th: losses(th)[index], theta, v, h))
            an.append(res.grad @ v)
        coords = rng.choice(np.arange(part.start, part.stop), 12, replace=False)
        for c in coords:                          # single coordinates
            e = np.zeros(nets.size)
            e[c] = 1
            fd.append(central_difference(lambda th: losses(th)[index], theta, e, h))
            an.append(res.grad[c])
        errors[which] = rel_error(np.array(an), np.array(fd))
    print("MLHF meta-gradient relative errors:", errors)
    assert errors["l_s"] < 1e-7 and errors["l_p"] < 1e-7


@pytest.mark.parametrize("q_sign", [1.0, -1.0])
def test_l_p_term_cotangents_match_finite_differences(q_sign):
    """l = −⟨d, g⟩ / sqrt(⟨d, g − r⟩): central differences in d and r, both where
    q = ⟨d, g − r⟩ is positive and where it is negative and floored at
    CURVATURE_TINY (then only ⟨d, g⟩ moves l)."""
    rng = np.random.default_rng(0)
    g, d = rng.standard_normal(7), rng.standard_normal(7)
    Ad = q_sign * d * (1 + rng.uniform(size=7))        # ⟨d, A d⟩ has the sign of q_sign
    r = g - Ad
    q = float(d @ (g - r))
    assert (q > CURVATURE_TINY) == (q_sign > 0)
    _, d_bar, r_bar = l_p_term(d, g, r)
    unit = np.eye(7)
    fd_d = np.array([central_difference(lambda v: l_p_term(v, g, r)[0], d, e, 1e-4)
                     for e in unit])
    fd_r = np.array([central_difference(lambda v: l_p_term(d, g, v)[0], r, e, 1e-4)
                     for e in unit])
    assert rel_error(d_bar, fd_d) < 1e-8
    if q_sign > 0:
        assert rel_error(r_bar, fd_r) < 1e-8
    else:
        assert np.all(r_bar == 0) and np.abs(fd_r).max() == 0


def test_meta_gradient_without_rnn_p():
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip = _setup(
        T=2, use_rnn_p=False, clip=0)
    res = unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev, batches, rows,
                 clip=clip, noise=noise)
    assert res.grad.shape == (nets.size_s,)
    rng = np.random.default_rng(1)
    v = rng.standard_normal(nets.size)

    def l_s(th):
        return unroll(nets, th, problem, w, copy.deepcopy(states), d_prev, r_prev, batches, rows,
                      clip=clip, frozen=res.frozen, backward=False).l_s

    err = rel_error(res.grad @ v, central_difference(l_s, theta, v / np.linalg.norm(v), 1e-3)
                    * np.linalg.norm(v))
    print(f"MLHF meta-gradient without RNN_p: relative error {err:.1e}")
    assert err < 1e-7


def test_training_one_meta_net_gives_the_same_partial_gradient():
    """``train="s"``/``"p"`` skip the other net's PCG backward; the gradient part kept is unchanged."""
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip = _setup(T=2)
    full = unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev, batches, rows,
                  clip=clip, noise=noise).grad
    n_s = nets.size_s
    for train, kept, zero in (("s", slice(0, n_s), slice(n_s, None)),
                              ("p", slice(n_s, None), slice(0, n_s))):
        part = unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev, batches,
                      rows, clip=clip, noise=noise, train=train).grad
        np.testing.assert_allclose(part[kept], full[kept], rtol=1e-12, atol=1e-300)
        assert not part[zero].any() and full[zero].any()


def test_unroll_without_record_gives_the_same_result_and_keeps_no_constants():
    """``record=False`` (meta-training) keeps only the noise and softmax weights."""
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip = _setup(T=2)
    runs = []
    for record in (True, False):
        st = copy.deepcopy(states)
        runs.append((unroll(nets, theta, problem, w, st, d_prev, r_prev, batches, rows,
                            clip=clip, noise=noise, record=record), st))
    (full, st_full), (lean, st_lean) = runs
    assert (lean.l_s, lean.l_p) == (full.l_s, full.l_p)
    for a, b in ((lean.grad, full.grad), (lean.w, full.w), (lean.d_prev, full.d_prev),
                 (lean.r_prev, full.r_prev), (lean.frozen.ls_weights, full.frozen.ls_weights)):
        np.testing.assert_array_equal(a, b)
    assert lean.frozen.noise == full.frozen.noise == noise
    assert not (lean.frozen.w or lean.frozen.d_prev or lean.frozen.r_prev or lean.frozen.inputs)
    assert len(full.frozen.w) == 2
    for rnn in st_full:
        for kind in st_full[rnn]:
            for (h, c), (h2, c2) in zip(st_full[rnn][kind], st_lean[rnn][kind]):
                np.testing.assert_array_equal(h, h2)
                np.testing.assert_array_equal(c, c2)


@pytest.mark.parametrize("noise_draw", ["step", "coordinate"])
def test_float32_meta_training_keeps_the_target_net_in_float32(noise_draw):
    """The step noise is drawn as NumPy float64; it must not promote the float32
    target net (NumPy 2's rules would make every later step float64)."""
    net = tiny_bn_convnet().net
    model = Model(net, (1, 4, 4), 3, dtype="float32", name="tiny32")
    trainer = MetaTrainer(Problem(model), _RandomStream32(), T=2, seed=0, noise_draw=noise_draw)
    assert trainer.noise > 0
    for _ in range(2):
        trainer.meta_step()
        assert trainer.w.dtype == np.float32 and trainer.d_prev.dtype == np.float32


@pytest.mark.parametrize("max_grad_norm", [1.0, "theta"])
def test_meta_gradient_clip_absolute_or_at_the_meta_parameters_norm(max_grad_norm):
    """max_grad_norm: a number clips the meta-gradient's global norm there (ours, 1.0);
    "theta" clips it at ‖θ‖ of all meta-parameters, as the released code does.  After one
    Adam step m = (1 − β₁) ĝ, so ‖m‖ / (1 − β₁) is the clipped norm."""
    trainer = MetaTrainer(Problem(tiny_bn_convnet()), _RandomStream(), l2=0.0,
                          max_grad_norm=max_grad_norm)
    expected = np.linalg.norm(trainer.theta) if max_grad_norm == "theta" else 1.0
    assert expected > 10 or max_grad_norm == 1.0          # ‖θ‖ ≈ 18 at initialisation
    grad = np.full(trainer.nets.size, 1e3)
    assert trainer._adam_step(grad) == pytest.approx(np.linalg.norm(grad), rel=1e-12)
    assert np.linalg.norm(trainer.adam.m) / (1 - trainer.adam.beta1) == pytest.approx(
        expected, rel=1e-12)
    with pytest.raises(UserError, match="max_grad_norm must be a number >= 0 or 'theta' or None"):
        MetaTrainer(Problem(tiny_bn_convnet()), _RandomStream(), max_grad_norm="norm")


def test_step_noise_draws_and_the_options_objectives():
    """noise_draw: T factors in U(0.98, 1.02), one per step or one per coordinate (the
    released code's); ls_form applies to the paper's objective only, noise_draw to the
    unrolled ones."""
    model = tiny_bn_convnet()
    per_step = MetaTrainer(Problem(model), _RandomStream(), T=3, seed=0)._draw_noise()
    per_coord = MetaTrainer(Problem(model), _RandomStream(), T=3, seed=0,
                            noise_draw="coordinate")._draw_noise()
    assert len(per_step) == len(per_coord) == 3
    assert all(isinstance(u, float) and 0.98 <= u <= 1.02 for u in per_step)
    for u in per_coord:
        assert u.shape == (model.num_params,) and u.dtype == np.float64
        assert 0.98 <= u.min() < u.max() <= 1.02
    with pytest.raises(UserError, match="ls_form do\\(es\\) not apply with objective='horizon'"):
        MetaTrainer(Problem(model), _RandomStream(), objective="horizon", ls_form="half")
    with pytest.raises(UserError, match="noise_draw do\\(es\\) not apply with objective='es'"):
        MetaTrainer(Problem(model), _RandomStream(), objective="es", noise_draw="coordinate")
    with pytest.raises(UserError, match="ls_form must be one of paper, half"):
        MetaTrainer(Problem(model), _RandomStream(), ls_form="quarter")


class _RandomStream:
    batch_size = 4

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def __next__(self):
        return self.rng.standard_normal((4, 1, 4, 4)), self.rng.integers(0, 3, 4)

    def batch_at(self, step):
        """The fixed batch number ``step`` (what held-out evaluation reads)."""
        rng = np.random.default_rng(step)
        return rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4)


class _RandomStream32(_RandomStream):
    def __next__(self):
        x, y = super().__next__()
        return x.astype(np.float32), y


def test_meta_trainer_train_p_keeps_rnn_s_and_resumes_with_fresh_moments(tmp_path):
    problem = Problem(tiny_bn_convnet())
    trainer = MetaTrainer(problem, _RandomStream(), T=2, seed=3, train="p")
    theta0 = trainer.theta.copy()
    trainer.run(2)
    n_s = trainer.nets.size_s
    np.testing.assert_array_equal(trainer.theta[:n_s], theta0[:n_s])
    assert np.abs(trainer.theta[n_s:] - theta0[n_s:]).max() > 0
    path = str(tmp_path / "p.h5")
    trainer.save(path)
    # a second stage trains RNN_s from the saved file: Adam starts afresh (other size)
    stage2 = MetaTrainer(problem, _RandomStream(1), T=2, seed=3, train="s")
    stage2.resume_from(path)
    assert stage2.adam.t == 0 and stage2.adam.m.shape == (n_s,)
    stage2.run(1)
    np.testing.assert_array_equal(stage2.theta[n_s:], trainer.theta[n_s:])
    with pytest.raises(Exception, match="train must be one of sp, s, p, got 'q'"):
        MetaTrainer(problem, _RandomStream(), T=2, train="q")
    with pytest.raises(Exception, match="train=p trains RNN_p"):
        MetaTrainer(problem, _RandomStream(), T=2, train="p", use_rnn_p=False)


def test_optimizer_state_round_trip_continues_identically():
    model = tiny_bn_convnet()
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4)) for _ in range(4)]
    opt = MLHF.from_meta(None, model, untrained=True, lr=1.0)
    w = model.init(0)
    state = opt.init(w)
    for b in batches[:2]:
        w, state, info = opt.step(problem, w, state, b)
    restored = opt.state_from_dict(opt.state_to_dict(state))
    w1, _, _ = opt.step(problem, w, state, batches[2])
    w2, _, _ = opt.step(problem, w, restored, batches[2])
    np.testing.assert_array_equal(w1, w2)
    assert info["loss"] > 0 and np.isfinite(info["residual"])


def test_clip_limits_the_step_to_a_fraction_of_the_weights():
    """``clip``: ‖w_new − w‖ = clip·‖w‖ when the step is longer, the paper's step otherwise;
    the next step warm-starts from the unclipped d either way."""
    model = tiny_bn_convnet()
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4))
    w = model.init(0)
    free = MLHF.from_meta(None, model, untrained=True, lr=1.0)
    w_free, state_free, info_free = free.step(problem, w, free.init(w), batch)
    step = np.linalg.norm(w_free - w)
    assert info_free["step_norm"] == pytest.approx(step, rel=1e-12)
    tight = step / np.linalg.norm(w) / 3            # the free step is 3 x the limit
    for clip, expected in ((tight, step / 3), (3 * step / np.linalg.norm(w), step)):
        opt = MLHF.from_meta(None, model, untrained=True, lr=1.0, clip=clip)
        w_new, state, info = opt.step(problem, w, opt.init(w), batch)
        assert np.linalg.norm(w_new - w) == pytest.approx(expected, rel=1e-12)
        assert info["step_norm"] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(w_new, w - (expected / step) * state_free["d_prev"],
                                   rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(state["d_prev"], state_free["d_prev"])
    for bad in (0, -0.1, "big", True):
        with pytest.raises(UserError, match="clip"):
            MLHF.from_meta(None, model, untrained=True, clip=bad)


def test_restart_starts_pcg_cold_when_the_loss_jumps():
    """``restart=ρ``: a step whose loss exceeds ρ × the previous step's is the step from
    d_prev = r_prev = None with the same LSTM states (logged ``restarted`` = 1); any
    other step is the paper's warm-started one.  ``f_prev`` survives a checkpoint."""
    model = tiny_bn_convnet()
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4)) for _ in range(2)]
    plain = MLHF.from_meta(None, model, untrained=True, lr=1.0)
    opt = MLHF.from_meta(None, model, untrained=True, lr=1.0, restart=2)
    w0 = model.init(0)
    w, state, info = opt.step(problem, w0, opt.init(w0), batches[0])
    assert info["restarted"] == 0 and state["f_prev"] == info["loss"]
    f1 = float(problem.loss(w, batches[1]))
    for f_prev, expect_restart in ((f1 / 2.01, True), (f1 / 1.99, False)):
        st = opt.state_from_dict({**opt.state_to_dict(state), "f_prev": f_prev})
        cold = {**copy.deepcopy(st), "d_prev": None, "r_prev": None}
        w_new, _, info = opt.step(problem, w, copy.deepcopy(st), batches[1])
        w_cold = plain.step(problem, w, cold, batches[1])[0]
        w_warm = plain.step(problem, w, copy.deepcopy(st), batches[1])[0]
        assert info["restarted"] == int(expect_restart)
        np.testing.assert_array_equal(w_new, w_cold if expect_restart else w_warm)
        assert not np.allclose(w_cold, w_warm)
    assert opt.state_from_dict(opt.state_to_dict(state))["f_prev"] == state["f_prev"]
    assert "restarted" not in plain.step(problem, w0, plain.init(w0), batches[0])[2]
    for bad in (1, 0.5, "big", True):
        with pytest.raises(UserError, match="restart"):
            MLHF.from_meta(None, model, untrained=True, restart=bad)


def test_loss_input_feeds_rnn_s_the_loss_log_ratio(tmp_path):
    """``loss_input``: RNN_s's fourth input column is tanh(log(l_t / l_{t−1})) on every
    coordinate (0 at the first step), RNN_p's inputs are unchanged; the step depends on
    the previous loss; the option survives the meta-parameter file."""
    model = tiny_bn_convnet()
    problem = Problem(model)
    nets = MLHFNets(loss_input=True)
    assert nets.rnn_s.lstms["conv.weight"].n_inputs == 4
    assert nets.rnn_p.lstms["conv.weight"].n_inputs == 3
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4))
    opt = MLHF(nets, nets.init(0) + 0.3 * rng.standard_normal(nets.size), model, lr=1.0)
    w = model.init(0)
    state = opt.init(w)
    f = float(problem.loss(w, batch))
    steps = {}
    for f_prev in (None, f, f / 3):
        st = {**copy.deepcopy(state), "f_prev": f_prev}
        lstm = nets.zero_states(nets.rows(model.layout), np, np.float64)
        lin = problem.loss_and_grad(w, batch)
        dirn = mlhf_direction(nets, opt.theta, lstm, problem, lin[2], lin[1], None, None,
                              opt.rows, loss_ratio=0.0 if f_prev is None else np.log(f / f_prev))
        np.testing.assert_allclose(dirn.inputs_s[:, 3], np.tanh(np.log(f / (f_prev or f))),
                                   rtol=1e-12)
        assert dirn.inputs_p.shape[1] == 3
        steps[f_prev] = opt.step(problem, w, st, batch)[0]
    np.testing.assert_array_equal(steps[None], steps[f])          # ratio 1: as at t = 0
    assert not np.allclose(steps[f], steps[f / 3])
    path = str(tmp_path / "l.h5")
    nets.save(path, opt.theta)
    assert MLHFNets.load(path)[0].loss_input is True
    assert MLHFNets().config()["loss_input"] is False


def test_step_reports_the_damping_of_each_parameter_kind():
    """RNN_s set to a different constant damping per kind (output weights 0, output
    bias softplus⁻¹(s_k − s_min)): each kind's mean is its own s_k, and the overall
    mean is the coordinate-weighted average of them."""
    model = tiny_bn_convnet()
    layout = model.layout
    nets = MLHFNets()
    wanted = {kind: 0.25 * (i + 1) for i, kind in enumerate(layout.kinds)}
    opt = MLHF(nets, nets.constant_damping(nets.init(0), wanted), model, lr=1.0)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4))
    w = model.init(0)
    _, _, info = opt.step(Problem(model), w, opt.init(w), batch)
    assert len(layout.kinds) == 6
    for kind, s_k in wanted.items():
        assert info[f"damping_mean.{kind}"] == pytest.approx(s_k, rel=1e-12)
    counts = {k: layout.kind_slice(k).stop - layout.kind_slice(k).start for k in layout.kinds}
    weighted = sum(counts[k] * wanted[k] for k in wanted) / sum(counts.values())
    assert info["damping_mean"] == pytest.approx(weighted, rel=1e-12)


def test_init_damping_moves_only_rnn_s_output_bias_to_softplus_inverse():
    """``init_damping=s0``: the meta-trainer's initialisation with RNN_s's output bias at
    softplus⁻¹(s0 − s_min) on every kind and nothing else changed; with the output
    weights then zeroed the step's damping is s0 exactly."""
    default = MetaTrainer(Problem(tiny_bn_convnet()), _RandomStream(), T=2, seed=3)
    moved = MetaTrainer(Problem(tiny_bn_convnet()), _RandomStream(), T=2, seed=3,
                        init_damping=2.5)
    nets = moved.nets
    position_s = nets.split(np.arange(nets.size, dtype=float))[0]   # flat index of each entry
    bias_at = []
    for kind in nets.kinds:
        where = nets.rnn_s.theta_slices[kind]
        bias_at += list(nets.rnn_s.lstms[kind].views(position_s[where])["out.bias"].ravel())
        bias = nets.rnn_s.lstms[kind].views(nets.split(moved.theta)[0][where])["out.bias"]
        assert float(bias[0]) == pytest.approx(np.log(np.expm1(2.5 - nets.s_min)), rel=1e-12)
    changed = np.flatnonzero(moved.theta != default.theta)
    np.testing.assert_array_equal(changed, np.sort(np.array(bias_at, dtype=int)))
    model = moved.problem.model
    opt = MLHF(nets, nets.constant_damping(moved.theta, 2.5), model, lr=1.0)
    w = model.init(0)
    _, _, info = opt.step(moved.problem, w, opt.init(w), _RandomStream().batch_at(0))
    assert info["damping_mean"] == pytest.approx(2.5, rel=1e-12)


@pytest.mark.parametrize("value", ["high", True, 0.0, -1.0, float("nan")])
def test_bad_init_damping_is_a_user_error(value):
    with pytest.raises(UserError, match="init_damping"):
        MetaTrainer(Problem(tiny_bn_convnet()), _RandomStream(), T=2, init_damping=value)


def test_untrained_meta_nets_step_with_lr_1_unless_told():
    """No meta-training batch to scale by: lr = 1 at any batch size, or the lr given."""
    model = tiny_bn_convnet()
    assert MLHF.from_meta(None, model, untrained=True).lr_for(128) == 1.0
    assert MLHF.from_meta(None, model, untrained=True, lr=0.5).lr_for(128) == 0.5
    assert MLHF.from_meta(None, model, untrained=True, lr="auto").lr_for(128) == 128 / 64


def test_meta_checkpoint_round_trip(tmp_path):
    model = tiny_bn_convnet()
    problem = Problem(model)
    trainer = MetaTrainer(problem, _RandomStream(), T=2, seed=3)
    trainer.run(2)
    path = tmp_path / "mlhf.h5"
    trainer.save(str(path), command="test")
    opt = MLHF.from_meta(str(path), model)
    np.testing.assert_array_equal(opt.theta, trainer.theta)
    assert opt.nets.b_mt == 4 and opt.lr_for(8) == 2.0 and opt.nets.inputs == "tanh"
    assert opt.restart is None


def test_meta_trainer_restart_is_recorded_and_becomes_the_optimizers_default(tmp_path):
    """Meta-trained with ``restart=ρ``: the file says so and MLHF restarts with ρ unless
    told otherwise; a bad ratio is a clear error."""
    model = tiny_bn_convnet()
    trainer = MetaTrainer(Problem(model), _RandomStream(), T=2, seed=3, restart=1.5)
    trainer.run(1)
    path = str(tmp_path / "r.h5")
    trainer.save(path)
    assert MLHFNets.load(path)[2]["restart"] == 1.5
    assert MLHF.from_meta(path, model).restart == 1.5
    assert MLHF.from_meta(path, model, restart=3).restart == 3
    with pytest.raises(UserError, match="restart"):
        MetaTrainer(Problem(model), _RandomStream(), T=2, restart=0.9)


def test_logsign_inputs_round_trip_and_a_mismatch_is_a_clear_error(tmp_path):
    from hfmeta.errors import UserError
    model = tiny_bn_convnet()
    trainer = MetaTrainer(Problem(model), _RandomStream(), T=2, inputs="logsign", seed=3)
    assert trainer.nets.rnn_s.n_inputs == 6          # (log|v|/p, sign v) for g, d_prev, r_prev
    trainer.run(1)
    path = tmp_path / "mlhf.h5"
    trainer.save(str(path), command="test")
    opt = MLHF.from_meta(str(path), model)
    assert opt.nets.inputs == "logsign"
    np.testing.assert_array_equal(opt.theta, trainer.theta)
    with pytest.raises(UserError, match="inputs=logsign"):
        MLHF.from_meta(str(path), model, inputs="tanh")
    with pytest.raises(UserError, match="choose tanh or logsign"):
        MLHFNets(inputs="log")
    fresh = MLHF.from_meta(None, model, untrained=True, inputs="logsign")
    assert fresh.theta.shape == trainer.theta.shape


def test_missing_kind_is_a_clear_error():
    from hfmeta.errors import UserError
    nets = MLHFNets(kinds=("fc.weight", "fc.bias"))
    with pytest.raises(UserError, match="conv.weight"):
        nets.rows(tiny_bn_convnet().layout)


def test_transfer_resnet_mini_to_resnet18v2_and_kind_mismatch(tmp_path):
    from hfmeta.errors import UserError
    from hfmeta.models import build
    rng = np.random.default_rng(0)
    small = build("resnet-mini", (3, 8, 8), 3, dtype="float64", width=0.25)

    class Stream:
        batch_size = 4

        def __next__(self):
            return rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 3, 4)

    trainer = MetaTrainer(Problem(small), Stream(), T=2, seed=0)
    trainer.run(1)
    path = str(tmp_path / "resnet.h5")
    trainer.save(path)
    big = build("resnet18v2", (3, 8, 8), 3, dtype="float64", width=1 / 16)
    opt = MLHF.from_meta(path, big)
    problem = Problem(big)
    w = big.init(0)
    state = opt.init(w)
    for _ in range(2):
        w, state, info = opt.step(problem, w, state, next(Stream()))
    assert np.isfinite(info["loss"]) and np.isfinite(w).all()
    # cnn-small has conv biases, which ResNets (no conv biases) never meta-trained
    with pytest.raises(UserError, match="conv.bias"):
        MLHF.from_meta(path, build("cnn-small", (3, 8, 8), 3, dtype="float64"))


def test_evaluate_scores_every_theta_on_the_same_recorded_states():
    """MetaTrainer.evaluate: l_p and l_s at the held-out windows' recorded states (the
    reference = untrained meta-nets' run), loss_end from theta's own steps."""
    model = tiny_bn_convnet()
    problem = Problem(model)

    trainer = MetaTrainer(problem, _RandomStream(), T=2, seed=3)
    reference = trainer.nets.init(0)
    windows = trainer.held_out(starts=2, warm=(0, 3))
    assert len(windows) == 4 and trainer.held_out(starts=2, warm=(0, 3)) is windows
    fresh = [model.init(12345 + j) for j in range(2)]
    np.testing.assert_array_equal(windows[0][0], fresh[0])                # k = 0: fresh nets
    assert not np.allclose(windows[2][0], fresh[0])                       # k = 3: trained 3 steps
    own = [unroll(trainer.nets, reference, problem, w, trainer._zero_states(), None, None, b,
                  trainer.rows, backward=False) for w, b, _ in windows]
    ev_ref = trainer.evaluate(reference, starts=2, warm=(0, 3))
    # at the reference the recorded states are its own: the same numbers as its rollouts
    assert ev_ref["l_p"] == pytest.approx(np.mean([r.l_p for r in own]), rel=1e-12)
    assert ev_ref["l_s"] == pytest.approx(np.mean([r.l_s for r in own]), rel=1e-12)
    assert ev_ref["loss_end"] == pytest.approx(np.mean([r.stats["loss_end"] for r in own]),
                                               rel=1e-12)
    # another theta is scored on those same states (the windows are not re-recorded)
    theta = reference + 0.3 * np.random.default_rng(1).standard_normal(reference.size)
    ev = trainer.evaluate(theta, starts=2, warm=(0, 3))
    assert trainer.held_out(starts=2, warm=(0, 3)) is windows
    fixed = [unroll(trainer.nets, theta, problem, w, trainer._zero_states(), None, None, b,
                    trainer.rows, frozen=f, backward=False) for w, b, f in windows]
    assert ev["l_p"] == pytest.approx(np.mean([r.l_p for r in fixed]), rel=1e-12)
    assert ev["l_p"] != pytest.approx(ev_ref["l_p"], rel=1e-9)


def test_held_out_windows_start_from_the_same_nets_in_every_configuration():
    """The warm-up of the held-out nets is the default untrained MLHF's, whatever the
    trainer's configuration, so configurations (Figure 4's ablation) are scored from the
    same nets; the T recorded steps are each configuration's own reference's."""
    problem = Problem(tiny_bn_convnet())
    default = MetaTrainer(problem, _RandomStream(), T=2, seed=3)
    ablation = MetaTrainer(problem, _RandomStream(), T=2, n=2, use_rnn_p=False,
                           inputs="logsign", seed=3)
    a, b = default.held_out(starts=2, warm=(3,)), ablation.held_out(starts=2, warm=(3,))
    for (w_a, batches_a, frozen_a), (w_b, batches_b, frozen_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(w_a, w_b)
        for (x_a, y_a), (x_b, y_b) in zip(batches_a, batches_b, strict=True):
            np.testing.assert_array_equal(x_a, x_b)
        # the windows' own steps differ: n = 2 without RNN_p is another optimizer
        assert not np.allclose(frozen_a.w[-1], frozen_b.w[-1])
    # and the warm-up is the default untrained MLHF's 3 steps from the fresh net
    fresh, batches = held_out_start(problem.model, default.batches, 2, 0, warm=3)
    nets = MLHFNets(b_mt=_RandomStream.batch_size)
    warm = unroll(nets, nets.init(0), problem, fresh, nets.zero_states(default.rows, np, np.float64),
                  None, None, batches[:4], default.rows, clip=default.clip, backward=False,
                  record=False).w
    assert not np.allclose(warm, fresh)
    np.testing.assert_array_equal(a[0][0], warm)


def test_clip_step_limits_the_length_of_lr_times_d_not_of_d():
    """clip_step(d, w, lr, clip) is the scale of the step lr·d: with lr = 0.5 a long d is
    shortened until ‖lr·scale·d‖ = clip·‖w‖; a d whose step lr·d is within the limit (though
    d itself is not) keeps scale 1; clip None or 0 never clips."""
    rng = np.random.default_rng(0)
    w, d = rng.standard_normal(20), rng.standard_normal(20)
    lr, clip = 0.5, 0.1
    d_long = d * (4 * clip * np.linalg.norm(w) / (lr * np.linalg.norm(d)))  # step 4 × limit
    scale = clip_step(d_long, w, lr, clip)
    assert scale == pytest.approx(0.25, rel=1e-12)
    assert np.linalg.norm(lr * scale * d_long) == pytest.approx(clip * np.linalg.norm(w),
                                                                rel=1e-12)
    d_mid = d * (1.5 * clip * np.linalg.norm(w) / np.linalg.norm(d))   # ‖lr·d‖ = 0.75 × limit
    assert clip_step(d_mid, w, lr, clip) == 1.0
    assert clip_step(d_long, w, lr, None) == 1.0 and clip_step(d_long, w, lr, 0) == 1.0


def test_loss_ratio_is_log_of_this_loss_over_the_previous():
    """RNN_s's loss input is log(f_t / f_{t−1}): log 3 after the loss tripled, −log 3 after
    it fell to a third, 0 at the first step; warm_start passes it on with d_prev, r_prev."""
    assert log_loss_ratio(3.0, 1.0) == pytest.approx(math.log(3.0), rel=1e-15)
    assert log_loss_ratio(0.5, 1.5) == pytest.approx(-math.log(3.0), rel=1e-15)
    assert log_loss_ratio(2.0, None) == 0.0
    d, r = np.ones(3), np.zeros(3)
    d_prev, r_prev, ratio = warm_start(6.0, 2.0, d, r, restart=None)
    assert d_prev is d and r_prev is r and ratio == pytest.approx(math.log(3.0), rel=1e-15)
    assert warm_start(6.0, 2.0, d, r, restart=2)[:2] == (None, None)     # 3 > 2: restart


def test_step_warm_starts_pcg_at_d_prev():
    """Algorithm 1 step 4: x0 = d_prev, r0 = g − A·d_prev with A v = G v + s ⊙ v.  From a
    state holding d_prev, r_prev, the step (lr 0.5) is lr·d with d = four textbook PCG
    iterations from x0 = d_prev with the step's s and P; RNN_p's third input is tanh(r0)."""
    model = tiny_bn_convnet()
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((4, 1, 4, 4)), rng.integers(0, 3, 4))
    opt = MLHF.from_meta(None, model, untrained=True, lr=0.5)
    w = model.init(0)
    d_prev = 0.1 * rng.standard_normal(model.num_params)
    r_prev = 0.01 * rng.standard_normal(model.num_params)
    state = {**opt.init(w), "d_prev": d_prev.copy(), "r_prev": r_prev.copy()}
    w_new, new_state, _ = opt.step(problem, w, state, batch)
    # the step's damping s and preconditioner P (the RNNs start from zero states)
    _, g, lin = problem.loss_and_grad(w, batch)
    dirn = mlhf_direction(opt.nets, opt.theta, opt.nets.zero_states(opt.rows, np, np.float64),
                          problem, lin, g, d_prev, r_prev, opt.rows)
    s, P = dirn.s, dirn.P

    def A(v):
        return problem.gvp(lin, v) + s * v

    def textbook_pcg(x):
        r = g - A(x)
        y = r / P
        p, rho, r0 = y, r @ y, r
        for _ in range(4):
            Ap = A(p)
            assert p @ Ap > 1e-6 and rho > 1e-6      # the PCG guards' floors stay idle
            alpha = rho / (p @ Ap)
            x, r = x + alpha * p, r - alpha * Ap
            y = r / P
            rho, rho_old = r @ y, rho
            p = y + (rho / rho_old) * p
        return x, r0

    x, r0 = textbook_pcg(d_prev.copy())
    np.testing.assert_allclose(dirn.inputs_p[:, 2], np.tanh(r0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(new_state["d_prev"], x, rtol=1e-9, atol=1e-12 * np.abs(x).max())
    np.testing.assert_allclose(w_new, w - 0.5 * x, rtol=1e-9, atol=1e-12)
    cold = textbook_pcg(np.zeros_like(g))[0]                 # the start matters here
    assert np.linalg.norm(cold - x) > 1e-3 * np.linalg.norm(x)
