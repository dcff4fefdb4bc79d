"""Evolution strategies on whole MLHF runs (ours): the fitness, the estimator, the plumbing."""
import copy
import math

import numpy as np
import pytest

from hfmeta.errors import UserError
from hfmeta.meta import mlhf_es
from hfmeta.meta.mlhf import MLHF, MLHFNets
from hfmeta.meta.mlhf_es import es_coordinates, run_fitness
from hfmeta.meta.mlhf_train import MetaTrainer
from hfmeta.params import KINDS
from hfmeta.problem import Problem
from test_mlhf import _RandomStream, tiny_bn_convnet


class _Stream(_RandomStream):
    """A stream with a position, as :class:`hfmeta.data.BatchIterator` has."""
    step = 0

    def __next__(self):
        self.step += 1
        return self.batch_at(self.step - 1)


def _problem():
    return Problem(tiny_bn_convnet())


def test_fitness_is_the_mean_log_loss_of_the_run_mlhf_takes():
    problem = _problem()
    nets = MLHFNets(b_mt=4)
    theta = nets.init(0)
    stream = _Stream()
    batches = [stream.batch_at(k) for k in range(5)]
    w0 = problem.model.init(1)
    f, last, blown = run_fitness(nets, theta, problem, w0, batches)
    opt, w = MLHF(nets, theta, problem.model), w0
    state, losses = opt.init(w), []
    for batch in batches:
        w, state, info = opt.step(problem, w, state, batch)
        losses.append(info["loss"])
    assert blown is None and last == pytest.approx(losses[-1], rel=1e-12)
    assert f == pytest.approx(np.mean(np.log(losses)), rel=1e-12)


class _Scripted:
    """An optimizer whose step k reports losses[k] and weights w · weights[k]."""
    losses, weights = (), ()

    def __init__(self, nets, theta, model, restart=None):
        pass

    def init(self, w):
        return 0

    def step(self, problem, w, k, batch):
        return w * self.weights[k], k + 1, {"loss": self.losses[k]}


@pytest.mark.parametrize("losses,weights,blown,logs", [
    # the loss turns non-finite at step 3: steps 3..6 count log(cap)
    ((2.0, 0.5, math.inf, 1.0, 1.0, 1.0), (1,) * 6, 3, [math.log(2.0), math.log(0.5)]),
    # step 2 leaves non-finite weights: its loss counts, steps 3..6 count log(cap)
    ((2.0, 0.5, 1.0, 1.0, 1.0, 1.0), (1, math.nan, 1, 1, 1, 1), 3,
     [math.log(2.0), math.log(0.5)]),
    # a loss above cap counts log(cap), and the run goes on
    ((2.0, 50.0, 0.5, 0.5, 0.5, 0.5), (1,) * 6, None,
     [math.log(2.0), math.log(10.0)] + [math.log(0.5)] * 4),
])
def test_a_blown_up_run_counts_log_cap_for_every_remaining_step(monkeypatch, losses, weights,
                                                                blown, logs):
    monkeypatch.setattr(_Scripted, "losses", losses)
    monkeypatch.setattr(_Scripted, "weights", weights)
    monkeypatch.setattr(mlhf_es, "MLHF", _Scripted)
    problem = _problem()
    f, last, step = run_fitness(None, None, problem, problem.model.init(0), [None] * 6, cap=10.0)
    assert step == blown
    assert last == pytest.approx(math.exp(logs[-1]), rel=1e-12)
    assert f == pytest.approx(np.mean(logs + [math.log(10.0)] * (6 - len(logs))), rel=1e-12)


def test_es_coordinates_are_the_chosen_layers_of_the_trained_nets_and_present_kinds():
    nets = MLHFNets()
    kinds = ("conv.weight", "fc.bias")
    index = es_coordinates(nets, "s", kinds)
    marked = np.zeros(nets.size)
    marked[index] = 1
    for kind, sl in nets.rnn_s.theta_slices.items():
        views = nets.rnn_s.lstms[kind].views(marked[sl])
        for name, view in views.items():
            chosen = kind in kinds and name.startswith("out.")
            assert view.all() if chosen else not view.any(), (kind, name)
    assert not marked[nets.size_s:].any()
    assert len(index) == len(kinds) * (nets.hidden[-1] + 1)
    both = es_coordinates(nets, "sp", kinds)
    assert len(both) == 2 * len(index) and set(index) <= set(both)
    every = es_coordinates(nets, "p", kinds, "all")
    expected = [np.arange(nets.size_s + nets.rnn_p.theta_slices[k].start,
                          nets.size_s + nets.rnn_p.theta_slices[k].stop) for k in kinds]
    np.testing.assert_array_equal(every, np.sort(np.concatenate(expected)))


def test_es_estimate_is_unbiased_for_a_linear_fitness(monkeypatch):
    """For F(θ) = c·θ the antithetic estimate averages (c·ε) ε, whose mean is c:
    with 4000 pairs it lies within a few standard errors of c on every coordinate."""
    c = np.linspace(-1.0, 2.0, 30)
    trainer = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=4000,
                          es_steps=1, seed=0)
    assert len(trainer.trained) == 30            # 6 kinds × (4 output weights + 1 bias)

    def linear(task):
        theta = task[0]
        return float(c @ theta[trainer.trained]), 0.0, None

    monkeypatch.setattr(mlhf_es, "_run_task", linear)
    grad, stats = trainer.es.gradient(trainer.theta, trainer.trained)
    # standard error of each coordinate: sqrt((|c|² + c_j²) / N)
    se = np.sqrt((c @ c + c ** 2) / 4000)
    assert np.all(np.abs(grad - c) < 4 * se), np.abs(grad - c) / se
    assert np.abs(grad - c).max() > 0                    # an estimate, not c itself


def test_es_pairs_share_net_and_batches_and_the_stream_moves_on(monkeypatch):
    trainer = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=3,
                          es_steps=5, es_sigma=0.1, seed=0)
    trainer.batches.step = 7
    seen = []

    def record(task):
        seen.append(task)
        return 0.0, 0.0, None

    monkeypatch.setattr(mlhf_es, "_run_task", record)
    theta0 = trainer.theta.copy()
    trainer.es.gradient(trainer.theta, trainer.trained)
    assert len(seen) == 6 and trainer.batches.step == 7 + 15
    for i in range(3):
        plus, minus = seen[2 * i], seen[2 * i + 1]
        assert plus[1:] == minus[1:] and plus[2] == 7 + 5 * i and plus[3] == 5
        np.testing.assert_allclose(plus[0] + minus[0], 2 * theta0, rtol=0, atol=1e-15)
        moved = np.flatnonzero(plus[0] != theta0)
        assert set(moved) <= set(trainer.trained) and len(moved) > 0
    assert len({t[1] for t in seen}) == 3                 # a fresh target net per pair


def test_es_meta_step_in_forked_workers_equals_one_process(tmp_path):
    """Two worker processes give the same meta-step as the parent alone; the step moves
    only the output layers of RNN_s; the objective is saved with the meta-parameters."""
    results = []
    for workers in (1, 2):
        trainer = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=2,
                              es_steps=3, meta_lr=0.01, workers=workers, seed=4)
        theta0 = trainer.theta.copy()
        stats = trainer.run(1)[0]
        results.append(trainer.theta)
        assert stats["es_blowups"] == 0 and math.isfinite(stats["es_fitness"])
    np.testing.assert_array_equal(results[0], results[1])
    moved = np.flatnonzero(results[0] != theta0)
    assert len(moved) > 0 and set(moved) <= set(es_coordinates(trainer.nets, "s", KINDS))
    path = str(tmp_path / "es.h5")
    trainer.save(path)
    assert MLHFNets.load(path)[2]["objective"] == "es"


@pytest.mark.parametrize("options,message", [
    ({"es_params": "body"}, "es_params"), ({"workers": 0}, "workers"),
    ({"es_pairs": 0}, "es_pairs"), ({"es_sigma": 0.0}, "es_sigma")])
def test_bad_es_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        MetaTrainer(_problem(), _Stream(), objective="es", **options)


def test_es_resumes_its_own_adam_moments_and_starts_fresh_ones_after_another_objective(
        tmp_path, monkeypatch):
    monkeypatch.setattr(mlhf_es, "_run_task", lambda task: (float(task[0].sum()), 0.0, None))
    es = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=2, seed=0)
    es.run(2)
    path = str(tmp_path / "es.h5")
    es.save(path)
    again = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=2, seed=0)
    again.resume_from(path)
    assert again.adam.t == 2 and again.iteration == 2
    np.testing.assert_array_equal(again.adam.m, es.adam.m)
    paper = MetaTrainer(_problem(), _Stream(), T=2, train="s", seed=0)
    paper.run(1)
    paper_path = str(tmp_path / "paper.h5")
    paper.save(paper_path)
    after_paper = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=2)
    after_paper.resume_from(paper_path)        # RNN_s's moments cover other coordinates
    assert after_paper.adam.t == 0 and after_paper.adam.m.shape == (30,)
    np.testing.assert_array_equal(after_paper.theta, paper.theta)
    after_paper.run(1)


def test_es_spread_is_the_mean_absolute_pair_difference(monkeypatch):
    """stats["es_spread"] = mean over pairs of |F(θ + σε) − F(θ − σε)|, which for the linear
    F(θ) = c·θ is mean |2σ c·ε_i| with the ε the trainer's generator draws; the pairs'
    differences have both signs here, so a signed mean would differ.  es_fitness is the
    mean of all 2·pairs fitnesses, c·θ for a linear F."""
    c = np.linspace(-1.0, 2.0, 30)
    trainer = MetaTrainer(_problem(), _Stream(), objective="es", train="s", es_pairs=6,
                          es_steps=1, es_sigma=0.1, seed=0)

    def linear(task):
        return float(c @ task[0][trainer.trained]), 0.0, None

    monkeypatch.setattr(mlhf_es, "_run_task", linear)
    eps = copy.deepcopy(trainer.rng).standard_normal((6, 30))    # the draws gradient() makes
    diff = 2 * 0.1 * (eps @ c)
    assert (diff > 0).any() and (diff < 0).any()
    _, stats = trainer.es.gradient(trainer.theta, trainer.trained)
    assert stats["es_spread"] == pytest.approx(np.abs(diff).mean(), rel=1e-10)
    assert stats["es_fitness"] == pytest.approx(float(c @ trainer.theta[trainer.trained]),
                                                rel=1e-10, abs=1e-12)
