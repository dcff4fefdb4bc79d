"""SLSTM: meta-gradient against finite differences, per-layer groups, transfer, joint mode."""
import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.meta.slstm import SLSTM, MetaTrainer
from hfmeta.meta.unroll import CoordinateGroups, match_groups, meta_gradient
from hfmeta.models import build
from hfmeta.problem import Problem
from hfmeta.storage import load_checkpoint, save_checkpoint
from test_l2l import meta_gradient_errors, meta_training_gain, random_batches, tiny_cnn


@pytest.mark.parametrize("diagonal", ["becker-lecun", "hutchinson"])
def test_meta_gradient_matches_finite_differences(diagonal):
    same, coord_err, dir_err = meta_gradient_errors(MetaTrainer, tiny_cnn(), diagonal=diagonal)
    assert same < 1e-12
    assert coord_err < 1e-7, coord_err
    assert dir_err < 1e-7, dir_err


def test_meta_gradient_with_permuted_coordinates():
    model = tiny_cnn("cnn-big", (1, 8, 8), channels=(2, 2, 2), hidden=4)
    assert CoordinateGroups(model.layout, per_layer=True).perm is not None
    same, coord_err, dir_err = meta_gradient_errors(MetaTrainer, model, n_coords=30,
                                                    n_directions=2)
    assert same < 1e-12 and coord_err < 1e-7 and dir_err < 1e-7, (coord_err, dir_err)


def test_one_group_per_layer_in_its_own_coordinate_order():
    model = tiny_cnn("cnn-big", (1, 8, 8))
    groups = CoordinateGroups(model.layout, per_layer=True)
    assert groups.names == ["conv0", "conv1", "conv2", "fc0", "fc1"]
    assert groups.layers == {"conv0": ["conv1"], "conv1": ["conv2"], "conv2": ["conv3"],
                             "fc0": ["fc1"], "fc1": ["fc2"]}
    perm = groups.perm
    assert np.array_equal(np.sort(perm), np.arange(model.num_params))
    for group, (layer,) in groups.layers.items():
        rows = perm[groups.row_slices[group]]
        expected = np.concatenate([np.arange(s.offset, s.offset + s.size)
                                   for s in model.layout.layer_specs(layer)])
        assert np.array_equal(np.sort(rows), np.sort(expected))
    v = np.random.default_rng(0).standard_normal(model.num_params)
    assert np.array_equal(groups.scatter(groups.gather(v)), v)


def test_transfer_rule():
    big = CoordinateGroups(tiny_cnn("cnn-big", (1, 8, 8)).layout, per_layer=True)
    assert match_groups(big, ["conv0", "fc0"], "src") == {
        "conv0": "conv0", "conv1": "conv0", "conv2": "conv0", "fc0": "fc0", "fc1": "fc0"}
    assert match_groups(big, ["conv0", "conv1", "fc0"], "src")["conv2"] == "conv1"


def test_transfer_small_to_big_and_mismatch(tmp_path):
    small = tiny_cnn("cnn-small", (1, 8, 8))
    trainer = MetaTrainer(Problem(small), iter(random_batches(small, 20, seed=2)), T=2)
    trainer.run(2)
    path = str(tmp_path / "slstm.h5")
    trainer.save(path)
    big = tiny_cnn("cnn-big", (1, 8, 8))
    opt = SLSTM.from_meta(path, big)
    theta_src = trainer.theta
    bank = trainer.opt.rule.bank
    for group in ("conv0", "conv1", "conv2"):
        assert np.array_equal(opt.theta[opt.rule.bank.theta_slices[group]],
                              theta_src[bank.theta_slices["conv0"]])
    problem, w = Problem(big), big.init(1)
    state = opt.init(w)
    for batch in random_batches(big, 3):
        w, state, info = opt.step(problem, w, state, batch)
        assert np.isfinite(info["loss"]) and np.isfinite(w).all()
    mlp = build("mlp", (1, 8, 8), 3, hidden=(4,), dtype="float64")
    mlp_trainer = MetaTrainer(Problem(mlp), iter(random_batches(mlp, 10)), T=2)
    mlp_trainer.run(1)
    mlp_path = str(tmp_path / "mlp.h5")
    mlp_trainer.save(mlp_path)
    with pytest.raises(UserError, match=r"no LSTM for conv layers, but layer 'conv1'"):
        SLSTM.from_meta(mlp_path, small)
    with pytest.raises(UserError, match="holds slstm meta-parameters, not l2l"):
        from hfmeta.meta.l2l import L2L
        L2L.from_meta(path, small)


def test_unknown_diagonal_is_a_clear_error():
    with pytest.raises(UserError, match="diagonal must be one of becker-lecun, .*, got 'nope'"):
        SLSTM.from_meta(None, tiny_cnn(), untrained=True, diagonal="nope")
    with pytest.raises(UserError, match="diagonal must be one of .*, got \\['becker-lecun'\\]"):
        SLSTM.from_meta(None, tiny_cnn(), untrained=True, diagonal=["becker-lecun"])


def run_steps(opt, problem, w, state, batches):
    for batch in batches:
        w, state, info = opt.step(problem, w, state, batch)
    return w, state, info


def test_joint_mode_learns_and_resumes_exactly(tmp_path):
    model = tiny_cnn()
    batches = random_batches(model, 9, seed=4)
    opt = SLSTM.from_meta(None, model, untrained=True, joint=True, T=2, meta_lr=1e-2)
    w0 = model.init(0)
    state = opt.init(w0)
    theta0 = state["meta.theta"].copy()
    # straight through: meta-updates happen at steps 3, 5, 7, 9
    w, state, info = run_steps(opt, Problem(model), w0, state, batches)
    assert state["meta.t"] == 4 and "meta_loss" in info and np.isfinite(info["meta_loss"])
    assert np.abs(state["meta.theta"] - theta0).max() > 1e-3
    # interrupted after step 4 (mid-unroll), saved to HDF5, resumed by a new optimizer
    problem = Problem(model)
    w_mid, state_mid, _ = run_steps(opt, problem, w0, opt.init(w0), batches[:4])
    save_checkpoint(str(tmp_path / "ck.h5"), optimizer=opt.state_to_dict(state_mid),
                    weights={"w": w_mid})
    ck = load_checkpoint(str(tmp_path / "ck.h5"))
    fresh = SLSTM.from_meta(None, model, untrained=True, joint=True, T=2, meta_lr=1e-2,
                            seed=99)                 # its own initial theta must not matter
    w2, state2, _ = run_steps(fresh, problem, ck["weights"]["w"],
                              fresh.state_from_dict(ck["optimizer"]), batches[4:])
    assert np.array_equal(w2, w)
    assert np.array_equal(state2["meta.theta"], state["meta.theta"])


def test_joint_replay_reproduces_the_carried_lstm_state():
    """The online update replays the unroll from joint.start.*; it must land on the live state."""
    model = tiny_cnn()
    opt = SLSTM.from_meta(None, model, untrained=True, joint=True, T=3)
    w = model.init(0)
    w, state, _ = run_steps(opt, Problem(model), w, opt.init(w), random_batches(model, 3))
    assert state["joint.n"] == 3
    states = opt.rule.state_from_flat(state, "joint.start.")
    for j in range(3):
        _, states, _ = opt.rule.forward(state["meta.theta"], states,
                                        [state[f"joint.{j}.in{i}"] for i in range(2)])
    live = opt.rule.state_from_flat(state)
    for group, layers in live.items():
        for (h, c), (h2, c2) in zip(layers, states[group]):
            assert np.array_equal(h, h2) and np.array_equal(c, c2)


def test_joint_online_meta_gradient_matches_finite_differences(monkeypatch):
    """Joint mode's online update (T = 3) hands Adam the gradient of the buffered
    unroll's meta-loss (1/T) Σ_{t=1..T} f(w_t; b_t), whose last term is the loss of the
    step that triggers the update, with the LSTM inputs (g, h) held at their recorded
    values and the LSTM states free: against central differences of that meta-loss
    replayed from the unroll's start (``replay_meta_loss``), the meta-parameters and
    LSTM states moved off their initial values."""
    from hfmeta.gradcheck import central_difference, rel_error
    from hfmeta.meta import slstm
    from hfmeta.meta.unroll import replay_meta_loss
    model = tiny_cnn()
    problem = Problem(model)
    batches = random_batches(model, 4, seed=7)
    opt = SLSTM.from_meta(None, model, untrained=True, joint=True, T=3, meta_lr=1e-2)
    rng = np.random.default_rng(3)
    opt.theta = opt.theta + 0.2 * rng.standard_normal(opt.theta.size)
    w0 = model.init(0)
    state = opt.init(w0)
    for key in [key for key in state if key.startswith("lstm.")]:
        state[key] = 0.3 * rng.standard_normal(state[key].shape)
    states0 = {g: [(h.copy(), c.copy()) for h, c in layers]
               for g, layers in opt.rule.state_from_flat(state).items()}
    w, state, _ = run_steps(opt, problem, w0, state, batches[:3])
    assert state["joint.n"] == 3
    inputs = [[state[f"joint.{j}.in{i}"].copy() for i in range(2)] for j in range(3)]
    theta0 = state["meta.theta"].copy()
    seen = []
    monkeypatch.setattr(slstm, "meta_gradient",
                        lambda *args: seen.append(meta_gradient(*args)) or seen[-1])
    _, state, info = opt.step(problem, w, state, batches[3])
    assert len(seen) == 1 and state["meta.t"] == 1
    d_theta = seen[0]

    def meta_loss(theta):
        return np.array([replay_meta_loss(opt.rule, theta, problem, w0, states0, inputs,
                                          batches[1:])])

    assert abs(meta_loss(theta0)[0] - info["meta_loss"]) < 1e-12
    coords = np.sort(rng.choice(theta0.size, 40, replace=False))
    fd = np.empty(coords.size)
    e = np.zeros_like(theta0)
    for k, c in enumerate(coords):
        e[c] = 1.0
        fd[k] = central_difference(meta_loss, theta0, e, 1e-3)[0]
        e[c] = 0.0
    directions = rng.standard_normal((3, theta0.size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    fd_dir = [central_difference(meta_loss, theta0, v, 1e-3)[0] for v in directions]
    coord_err, dir_err = rel_error(d_theta[coords], fd), rel_error(directions @ d_theta, fd_dir)
    assert coord_err < 1e-7 and dir_err < 1e-7, (coord_err, dir_err)


def test_offline_trainer_refuses_joint():
    model = tiny_cnn()
    with pytest.raises(UserError, match="offline"):
        MetaTrainer(Problem(model), iter(random_batches(model, 4)), joint=True)


def test_meta_training_lowers_the_meta_loss():
    losses, before, after = meta_training_gain(MetaTrainer)     # about 2.29 -> 1.97
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert after < before - 0.2, (before, after)


def test_joint_training_run_resumes_exactly(tmp_path):
    """A run folder stopped mid-unroll and resumed ends where an uninterrupted run ends."""
    from hfmeta.train import Run, RunConfig

    def config(steps):
        return RunConfig(model="cnn-small", model_options={"channels": 2}, optimizer="slstm",
                         hparams={"untrained": True, "joint": True, "T": 2, "meta_lr": 1e-2},
                         batch_size=16, steps=steps, eval_every=100)

    Run.create(config(5), str(tmp_path / "a")).train()
    Run.resume(str(tmp_path / "a"), steps=9).train()
    Run.create(config(9), str(tmp_path / "b")).train()
    a, b = (load_checkpoint(str(tmp_path / d / "checkpoint.h5")) for d in "ab")
    assert a["step"] == b["step"] == 9
    np.testing.assert_array_equal(a["weights"]["w"], b["weights"]["w"])
    np.testing.assert_array_equal(a["optimizer"]["meta.theta"], b["optimizer"]["meta.theta"])
    assert a["optimizer"]["meta.t"] == 4
