"""L2L: meta-gradient against finite differences, meta-training, transfer, optimizer interface."""
import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.gradcheck import central_difference, rel_error
from hfmeta.meta.l2l import L2L, MetaTrainer
from hfmeta.meta.unroll import CoordinateGroups, replay_meta_loss
from hfmeta.models import build
from hfmeta.problem import Problem

T = 3


def random_batches(model, n_batches, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n,) + model.in_shape), rng.integers(0, model.classes, n))
            for _ in range(n_batches)]


def tiny_cnn(name="cnn-small", in_shape=(1, 6, 6), **options):
    options = options or ({"channels": 2} if name == "cnn-small" else {})
    return build(name, in_shape, 3, dtype="float64", **options)


def meta_gradient_errors(trainer_cls, model, seed=0, n_coords=40, n_directions=3, h=1e-3,
                         **options):
    """Relative errors of one unroll's meta-gradient (T = 3) against central differences.

    The unroll is the meta-trainer's own; the finite-difference side replays it
    with the LSTM inputs (gradients, and h for SLSTM) frozen at the recorded
    values and the LSTM states free, and differences the mean loss along it.
    The meta-parameters are moved off their initialisation and the initial
    LSTM states are random, so nothing sits at a special point.  Errors are
    ``rel_error`` over a random subset of coordinates and over the derivatives
    along random unit directions.  The meta-loss is O(1) while its derivatives
    are small, so rounding (∝ 1/h) dominates: h = 1e-3 with the fourth-order
    stencil (truncation ∝ h⁴).
    """
    problem = Problem(model)
    batches = random_batches(model, T + 1, seed=seed)
    trainer = trainer_cls(problem, iter(batches), T=T, reset_prob=1.0, buffer=0,
                          seed=seed, **options)
    rng = np.random.default_rng(seed + 1)
    trainer.theta = trainer.theta + 0.2 * rng.standard_normal(trainer.theta.size)
    trainer._maybe_reset()
    trainer.states = {g: [(0.3 * rng.standard_normal(h_.shape), rng.standard_normal(c.shape))
                          for h_, c in layers] for g, layers in trainer.states.items()}
    rec = trainer._unroll()
    rule = trainer.opt.rule

    def meta_loss(theta):
        return np.array([replay_meta_loss(rule, theta, problem, rec.w0, rec.states0,
                                          rec.inputs, batches[1:])])

    theta0 = trainer.theta
    same_value = abs(meta_loss(theta0)[0] - np.mean(rec.losses))
    coords = np.sort(rng.choice(theta0.size, n_coords, replace=False))
    fd = np.empty(n_coords)
    e = np.zeros_like(theta0)
    for k, c in enumerate(coords):
        e[c] = 1.0
        fd[k] = central_difference(meta_loss, theta0, e, h)[0]
        e[c] = 0.0
    coord_error = rel_error(rec.d_theta[coords], fd)
    directions = rng.standard_normal((n_directions, theta0.size))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    fd_dir = [central_difference(meta_loss, theta0, v, h)[0] for v in directions]
    return same_value, coord_error, rel_error(directions @ rec.d_theta, fd_dir)


@pytest.mark.parametrize("name", ["cnn-small", "mlp"])
def test_meta_gradient_matches_finite_differences(name):
    model = tiny_cnn() if name == "cnn-small" else build("mlp", (1, 3, 3), 3, hidden=(5, 4),
                                                         dtype="float64")
    same, coord_err, dir_err = meta_gradient_errors(MetaTrainer, model)
    assert same < 1e-12
    assert coord_err < 1e-7, coord_err
    assert dir_err < 1e-7, dir_err


def test_groups_by_type_are_contiguous():
    model = tiny_cnn("cnn-big", (1, 8, 8))
    groups = CoordinateGroups(model.layout, per_layer=False)
    assert groups.names == ["conv", "fc"] and groups.perm is None
    lay = model.layout
    assert groups.row_slices["conv"] == slice(0, lay.kind_slice("conv.bias").stop)
    assert groups.row_slices["fc"] == slice(lay.kind_slice("fc.weight").start, lay.size)


def test_step_interface_and_state_round_trip():
    model = tiny_cnn()
    problem = Problem(model)
    opt = L2L.from_meta(None, model, untrained=True)
    batches = random_batches(model, 6)
    w = model.init(0)
    state = opt.init(w)
    assert sorted(k for k in state if k != "t") == sorted(
        f"lstm.{g}.{l}.{n}" for g in ("conv", "fc") for l in (0, 1) for n in "hc")
    for batch in batches[:3]:
        w, state, info = opt.step(problem, w, state, batch)
        assert np.isfinite(info["loss"]) and info["step_norm"] > 0
    saved, w_saved = opt.state_to_dict(state), w.copy()
    for batch in batches[3:]:
        w, state, _ = opt.step(problem, w, state, batch)
    w2, state2 = w_saved, opt.state_from_dict(saved)
    for batch in batches[3:]:
        w2, state2, _ = opt.step(problem, w2, state2, batch)
    assert np.array_equal(w, w2)


def test_save_load_and_transfer(tmp_path):
    small = tiny_cnn("cnn-small", (1, 8, 8))
    trainer = MetaTrainer(Problem(small), iter(random_batches(small, 20, seed=3)), T=2)
    trainer.run(2)
    path = str(tmp_path / "l2l.h5")
    trainer.save(path, command="test")
    same = L2L.from_meta(path, small)
    assert np.array_equal(same.theta, trainer.theta)
    big = tiny_cnn("cnn-big", (1, 8, 8))           # same layer types, more layers
    opt = L2L.from_meta(path, big)
    assert opt.groups.names == ["conv", "fc"]
    problem, w = Problem(big), big.init(1)
    state = opt.init(w)
    for batch in random_batches(big, 3):
        w, state, info = opt.step(problem, w, state, batch)
        assert np.isfinite(info["loss"])
    resnet = build("resnet-mini", (3, 8, 8), 3, dtype="float64", width=0.25)
    with pytest.raises(UserError, match="no LSTM for bn layers"):
        L2L.from_meta(path, resnet)


def test_missing_meta_file_is_a_clear_error(tmp_path, monkeypatch):
    import hfmeta.meta.l2l as l2l
    monkeypatch.setattr(l2l, "shipped_path", lambda name: str(tmp_path / f"{name}.h5"))
    with pytest.raises(UserError, match="untrained=True"):
        L2L.from_meta(None, tiny_cnn())
    with pytest.raises(UserError, match="does not exist"):
        L2L.from_meta(str(tmp_path / "nope.h5"), tiny_cnn())


def test_resume_from_continues_meta_training(tmp_path):
    model = tiny_cnn()
    batches = random_batches(model, 40, seed=5)
    a = MetaTrainer(Problem(model), iter(batches), T=2, reset_prob=1.0, buffer=0)
    a.run(2)
    path = str(tmp_path / "m.h5")
    a.save(path)
    b = MetaTrainer(Problem(model), iter(batches), T=2, reset_prob=1.0, buffer=0)
    b.resume_from(path)
    assert b.iteration == 2 and np.array_equal(b.theta, a.theta)
    assert np.array_equal(b.adam.m, a.adam.m) and b.adam.t == a.adam.t


# ----------------------------------------------------------------------------
# meta-training on the shipped dataset
# ----------------------------------------------------------------------------
def meta_training_gain(trainer_cls, iterations=8, unroll=4, n_eval=2, **options):
    """Meta-train on mnist5k's meta split (cnn-small with 4 channels), then compare
    the meta-loss of the initial and the trained meta-parameters on the same
    held-out unrolls (same fresh target nets, same batches: a paired comparison).

    Returns ``(training meta-losses, untrained eval, trained eval)``.
    """
    from hfmeta.data import open_dataset
    ds = open_dataset("mnist5k")
    model = build("cnn-small", ds.image_shape, ds.classes, channels=4, dtype="float32")
    common = dict(T=unroll, reset_prob=1.0, buffer=0, **options)
    trainer = trainer_cls(Problem(model), ds.batches("meta", 32, seed=0), meta_lr=3e-2, **common)
    theta0 = trainer.theta.copy()
    losses = [r["meta_loss"] for r in trainer.run(iterations)]

    def evaluate(theta):
        ev = trainer_cls(Problem(model), ds.batches("meta", 32, seed=1), meta_lr=0.0, seed=7,
                         **common)
        ev.theta = ev.opt.theta = theta
        return np.mean([r["meta_loss"] for r in ev.run(n_eval)])

    return losses, evaluate(theta0), evaluate(trainer.theta)


def test_meta_training_lowers_the_meta_loss():
    losses, before, after = meta_training_gain(MetaTrainer)     # about 2.51 -> 2.02
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert after < before - 0.2, (before, after)



# ----------------------------------------------------------------------------
# MetaTrainer bookkeeping: replay stores, the recorded losses, reset defaults
# ----------------------------------------------------------------------------
def tiny_mlp():
    return build("mlp", (1, 3, 3), 3, hidden=(5, 4), dtype="float64")


def recording_unrolls(trainer):
    """Make ``trainer`` keep each iteration's :class:`UnrollRecord` (returned list)."""
    recs, unroll = [], trainer._unroll
    trainer._unroll = lambda: recs.append(unroll()) or recs[-1]
    return recs


def test_replay_holds_the_fresh_start_and_every_store_every_th_weights():
    """buffer > 0, store_every = 3, no resets after the first: after 6 iterations the replay
    holds the fresh initial net (stored when drawn) and the weights after iterations 3 and
    6, nothing else (not one store per iteration)."""
    model = tiny_mlp()
    trainer = MetaTrainer(Problem(model), iter(random_batches(model, 20)), T=1, reset_prob=0.0,
                          buffer=50, store_every=3)
    recs = recording_unrolls(trainer)
    trainer.run(6)
    expected = [recs[0].w0, recs[3].w0, trainer.w]    # recs[3].w0: the weights after 3
    assert len(trainer.replay) == len(expected)
    for item, w in zip(trainer.replay.items, expected):
        assert np.array_equal(item, w)


def test_a_fresh_start_is_stored_in_the_replay():
    """With buffer > 0 every fresh initialisation drawn is stored (ReplayBuffer's
    docstring), so replayed starts include fresh nets and not only trained weights."""
    model = tiny_mlp()
    trainer = MetaTrainer(Problem(model), iter(random_batches(model, 4)), T=1, buffer=5,
                          store_every=100)
    assert trainer._maybe_reset()
    assert len(trainer.replay) == 1 and np.array_equal(trainer.replay.items[0], trainer.w)


def test_meta_loss_is_the_mean_and_last_loss_the_last_of_the_unroll():
    """T = 3: ``meta_loss`` is the mean training loss along the unroll (what the
    meta-gradient differentiates; replayed independently), not the sum; ``first_loss`` is
    f at the start and ``last_loss`` f at the unroll's end weights, not its first step."""
    model = tiny_mlp()
    problem = Problem(model)
    batches = random_batches(model, T + 1, seed=4)
    trainer = MetaTrainer(problem, iter(batches), T=T, reset_prob=1.0, buffer=0, seed=4)
    recs = recording_unrolls(trainer)
    theta = trainer.theta.copy()
    record = trainer.run(1)[0]
    rec = recs[0]
    replayed = replay_meta_loss(trainer.opt.rule, theta, problem, rec.w0, rec.states0,
                                rec.inputs, batches[1:])
    assert record["meta_loss"] == pytest.approx(replayed, rel=1e-12)
    assert record["first_loss"] == pytest.approx(problem.loss_and_grad(rec.w0, batches[0])[0],
                                                 rel=1e-12)
    last = problem.loss_and_grad(trainer.w, batches[T])[0]
    assert record["last_loss"] == pytest.approx(last, rel=1e-12)
    assert abs(rec.losses[0] - last) > 1e-6            # the first step's loss differs


class FixedDraw:
    """A generator whose ``random()`` is ``value``; other draws from ``rng``."""

    def __init__(self, value, rng):
        self.value, self.rng = value, rng

    def random(self):
        return self.value

    def __getattr__(self, name):
        return getattr(self.rng, name)


def test_default_reset_probability_is_0_2():
    """The trainer's docstring: reset_prob 0.2 (a target net lives about 5 unrolls).  A draw
    of 0.3 keeps the target net, one of 0.1 resets it."""
    model = tiny_mlp()
    trainer = MetaTrainer(Problem(model), iter(random_batches(model, 4)))
    assert trainer.options["reset_prob"] == 0.2
    trainer._maybe_reset()                              # the first start always resets
    trainer.rng = FixedDraw(0.3, trainer.rng)
    assert not trainer._maybe_reset()
    trainer.rng = FixedDraw(0.1, trainer.rng.rng)
    assert trainer._maybe_reset()
