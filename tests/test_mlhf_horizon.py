"""The longer-horizon MLHF meta-objective (ours): its meta-gradient against finite differences."""
import copy

import numpy as np
import pytest

from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.meta.mlhf_horizon import horizon_unroll
from test_mlhf import _setup


@pytest.mark.parametrize("clip,log,restart,noise_draw", [
    (0.05, False, None, "step"), (10.0, False, None, "step"), (0.05, True, None, "step"),
    (0.05, True, 1 + 1e-9, "step"), (0.05, False, None, "coordinate")])
def test_horizon_meta_gradient_matches_finite_differences(clip, log, restart, noise_draw):
    """L_H = (1/H) Σ_t l(x^t, w^t) (or of log l) over H = 3 steps of a tiny conv net with
    BN (float64), target-net derivatives as constants (the frozen replay), both meta-nets;
    with the step clip active (0.05) and inactive (10), with a PCG restart within
    the unroll (ratio 1 + 1e-9: any loss increase restarts) and RNN_s's loss input, and
    with one step-noise factor per coordinate."""
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, _ = _setup(
        loss_input=restart is not None, noise_draw=noise_draw)
    res = horizon_unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev,
                         batches, rows, clip=clip, noise=noise, train="sp", log=log,
                         restart=restart)

    def meta_loss(th):
        return horizon_unroll(nets, th, problem, w, copy.deepcopy(states), d_prev, r_prev,
                              batches, rows, clip=clip, frozen=res.frozen, backward=False,
                              log=log).stats["meta_loss"]

    # the replay reproduces the run at theta, and the run moved the net
    assert meta_loss(theta) == pytest.approx(res.stats["meta_loss"], rel=1e-12)
    assert not np.allclose(res.w, w)
    cold = [t for t in range(1, len(batches) - 1) if res.frozen.d_prev[t] is None]
    assert bool(cold) == (restart is not None), "a restart within the unroll, when asked"
    rng = np.random.default_rng(5)
    n_s = nets.size_s
    errors = {}
    for which, part in (("s", slice(0, n_s)), ("p", slice(n_s, nets.size))):
        fd, an = [], []
        for _ in range(3):                       # random directions within one net's block
            v = np.zeros(nets.size)
            v[part] = rng.standard_normal(part.stop - part.start)
            v /= np.linalg.norm(v)
            fd.append(central_difference(meta_loss, theta, v, 1e-3))
            an.append(res.grad @ v)
        for c in rng.choice(np.arange(part.start, part.stop), 8, replace=False):
            e = np.zeros(nets.size)
            e[c] = 1
            fd.append(central_difference(meta_loss, theta, e, 1e-3))
            an.append(res.grad[c])
        assert np.abs(an).max() > 0
        errors[which] = rel_error(np.array(an), np.array(fd))
    print("MLHF horizon meta-gradient relative errors:", errors)
    assert errors["s"] < 1e-7 and errors["p"] < 1e-7


def test_horizon_train_s_gives_rnn_s_part_only():
    nets, theta, problem, w, states, d_prev, r_prev, batches, rows, noise, clip = _setup(T=2)
    full = horizon_unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev,
                          batches, rows, clip=clip, noise=noise, train="sp").grad
    part = horizon_unroll(nets, theta, problem, w, copy.deepcopy(states), d_prev, r_prev,
                          batches, rows, clip=clip, noise=noise, train="s").grad
    n_s = nets.size_s
    np.testing.assert_allclose(part[:n_s], full[:n_s], rtol=1e-12, atol=1e-300)
    assert not part[n_s:].any() and full[n_s:].any()


def test_meta_trainer_with_the_horizon_objective(tmp_path):
    """``objective="horizon"``: a meta-step follows L_H's gradient (Adam moves theta), the
    objective is saved with the meta-parameters; an unknown objective is a UserError."""
    from hfmeta.errors import UserError
    from hfmeta.meta.mlhf import MLHFNets
    from hfmeta.meta.mlhf_train import MetaTrainer
    from hfmeta.problem import Problem
    from test_mlhf import _RandomStream, tiny_bn_convnet

    problem = Problem(tiny_bn_convnet())
    trainer = MetaTrainer(problem, _RandomStream(), T=3, seed=3, objective="horizon", train="s")
    theta0 = trainer.theta.copy()
    stats = trainer.run(2)
    n_s = trainer.nets.size_s
    assert all(np.isfinite(s["meta_loss"]) and s["grad_norm"] > 0 for s in stats)
    assert not np.allclose(trainer.theta[:n_s], theta0[:n_s])
    np.testing.assert_array_equal(trainer.theta[n_s:], theta0[n_s:])
    path = str(tmp_path / "h.h5")
    trainer.save(path)
    assert MLHFNets.load(path)[2]["objective"] == "horizon"
    with pytest.raises(UserError, match="objective"):
        MetaTrainer(problem, _RandomStream(), T=2, objective="greedy")
