"""Evolution strategies on whole training runs: a meta-objective that sees blow-ups (ours).

Why (``docs/mlhf_restart.md``): every gradient meta-objective here holds the
target net's derivatives constant over an unroll of T steps, so it cannot see
what a damping does to the *stability* of a run: meta-trained for a long
horizon (:mod:`hfmeta.meta.mlhf_horizon`), RNN_s learns a conv-weight damping
that trains 2.5x faster on the runs that finish and blows up on 4 of 10
others.  This objective scores the meta-parameters θ by whole runs, taken
exactly as ``hfmeta train -o mlhf`` takes them (lr = b_tr / b_mt = 1, no step
clip, no step noise, PCG warm start)::

    F(θ) = (1/K) Σ_{k=1..K} log min(l(x^k, w^k), cap)

over K MLHF steps from a fresh target net (the mean log-loss of the run,
Wichrowska et al. 2017); a run whose loss turns non-finite counts log(cap)
for each of its remaining steps, so a blow-up costs far more than any gain.
F is not differentiated: its gradient is estimated by antithetic evolution
strategies (Salimans, Ho, Chen, Sidor & Sutskever 2017) with common random
numbers::

    ĝ = 1/(2 N σ) Σ_{i=1..N} [F(θ + σ ε_i) − F(θ − σ ε_i)] ε_i,    ε_i ~ N(0, I)

on the trained coordinates; the two runs of pair i share their target-net
seed and their K batches: pair i takes the i-th block of K consecutive
batches of the meta-training stream, which moves on N·K batches per
meta-iteration.
ĝ is unbiased for the gradient of the Gaussian-smoothed F, however long the
run, where truncated backpropagation through an unrolled optimizer is biased
and can explode (Metz, Maheswaranathan, Nixon, Freeman & Sohl-Dickstein
2019).  The price is variance: N pairs per step in D dimensions, so
``es_params="out"`` perturbs only the output layers of the LSTMs (5
numbers per kind and net: D = 20 for RNN_s on cnn-small's four kinds) and
keeps their bodies at initialisation; ``"all"`` perturbs every meta-parameter
of the trained nets (D = 1108 for RNN_s on cnn-small).  Kinds the target net
does not have are left alone.

What it learns on ``cnn-small`` (``hfmeta/meta/shipped/README.md``, 30
meta-iterations of 8 pairs, output layers of RNN_s, 28 min on two cores):
four per-kind dampings, constant along a run (seed 0: fc.weight 0.43,
conv.weight 0.66, conv.bias 0.60, fc.bias 0.98, against the untrained 0.69),
with which each of 10 fresh runs of the held-out target split ends below the
untrained MLHF (0.00225 against 0.00308; the same for a second meta-training
seed), and the untrained MLHF with those dampings held constant does as well
(``docs/mlhf_es.md``).  On the meta split the second seed's file diverges on
1 of 10 fresh runs: safer than the horizon objectives, not safe.

Cost: 2N whole runs per meta-iteration (cnn-small, K = 120, float32: ~7 s
a run on one core); ``workers`` > 1 runs them in that many forked processes
(CPU only).
"""
from __future__ import annotations

import math
import multiprocessing

import numpy as np

from .. import backend
from ..errors import UserError
from .mlhf import MLHF

ES_PARAMS = ("out", "all")
_WORKER = {}       # what a forked worker needs: set in the parent just before the fork


def run_fitness(nets, theta, problem, w, batches, cap=10.0, restart=None):
    """One whole MLHF run; returns ``(F, last loss, step of a blow-up or None)``.

    ``batches``: the K mini-batches, in order.  F as in the module docstring.
    """
    opt = MLHF(nets, theta, problem.model, restart=restart)
    state, log_losses, blown = opt.init(w), [], None
    log_cap = math.log(cap)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for k, batch in enumerate(batches):
            w, state, info = opt.step(problem, w, state, batch)
            loss = float(info["loss"])
            if not math.isfinite(loss):
                blown = k + 1
                break
            log_losses.append(min(math.log(max(loss, 1e-300)), log_cap))
            if not bool(backend.get_array_module(w).isfinite(w).all()):
                blown = k + 2             # the next step's loss would be non-finite
                break
    last = math.exp(log_losses[-1]) if log_losses else float("nan")
    log_losses += [log_cap] * (len(batches) - len(log_losses))
    return float(np.mean(log_losses)), last, blown


def _run_task(task):
    """A worker's (or the parent's) run of one perturbed θ."""
    theta, seed, first_step, steps = task
    ctx = _WORKER
    model = ctx["problem"].model
    batches = [ctx["batches"].batch_at(first_step + k) for k in range(steps)]
    return run_fitness(ctx["nets"], theta, ctx["problem"], model.init(seed), batches,
                       ctx["cap"], ctx["restart"])


def es_coordinates(nets, train, kinds, params="out"):
    """Indices into θ that ES perturbs: of the trained nets (``train``: "s", "p" or
    "sp") and the parameter kinds the target net has (``kinds``; the others get no
    signal), the output layers (out.weight, out.bias) with ``params="out"``, every
    meta-parameter with ``"all"``."""
    banks = [("s", nets.rnn_s, 0)]
    if nets.use_rnn_p:
        banks.append(("p", nets.rnn_p, nets.size_s))
    index = []
    for name, bank, offset in banks:
        if name not in train:
            continue
        for kind in kinds:
            sl, lstm = bank.theta_slices[kind], bank.lstms[kind]
            if params == "all":
                index.append(offset + np.arange(sl.start, sl.stop))
                continue
            local = lstm.views(np.arange(lstm.size))
            index += [offset + sl.start + local[key].ravel() for key in ("out.weight", "out.bias")]
    return np.sort(np.concatenate(index))


class WholeRunES:
    """The ES meta-gradient of :class:`hfmeta.meta.mlhf_train.MetaTrainer` with
    ``objective="es"``: ``pairs`` antithetic pairs of ``steps``-step runs per
    meta-iteration, perturbation ``sigma``, loss cap ``cap``, ``workers``
    processes (checked by the trainer, :data:`hfmeta.meta.mlhf_train.TRAINER_RANGES`)."""

    def __init__(self, trainer, pairs=8, sigma=0.1, steps=120, cap=10.0, workers=1):
        self.trainer = trainer
        self.pairs, self.sigma, self.steps = int(pairs), float(sigma), int(steps)
        self.cap, self.workers = float(cap), int(workers)
        if self.workers > 1 and trainer.problem.model.device != "cpu":
            raise UserError("workers > 1 forks processes, which the GPU does not allow; "
                            "use workers=1 with --device gpu")
        self._pool = None

    def _map(self, tasks):
        _WORKER.update(problem=self.trainer.problem, batches=self.trainer.batches,
                       nets=self.trainer.nets, cap=self.cap, restart=self.trainer.restart)
        if self.workers == 1:
            return [_run_task(t) for t in tasks]
        if self._pool is None:       # forked once: the workers inherit _WORKER
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self._pool.map(_run_task, tasks, chunksize=1)

    def gradient(self, theta, trained):
        """``(ĝ on the trained coordinates, stats)`` at ``theta``."""
        t = self.trainer
        xp = t.xp
        host = backend.asnumpy(theta)
        size = len(host[trained])
        eps = t.rng.standard_normal((self.pairs, size))
        seeds = t.rng.integers(2 ** 31, size=self.pairs)
        first = t.batches.step
        tasks = []
        for i in range(self.pairs):
            start = first + i * self.steps
            for sign in (1, -1):
                th = host.copy()
                th[trained] += sign * self.sigma * eps[i]
                tasks.append((xp.asarray(th, dtype=t.dtype), int(seeds[i]), start, self.steps))
        t.batches.step = first + self.pairs * self.steps      # the stream moves on
        results = self._map(tasks)
        f = np.array([r[0] for r in results]).reshape(self.pairs, 2)
        grad = ((f[:, 0] - f[:, 1]) @ eps) / (2 * self.pairs * self.sigma)
        blown = sum(r[2] is not None for r in results)
        last = [r[1] for r in results if r[2] is None]
        stats = {"es_fitness": float(f.mean()),
                 "es_spread": float(np.abs(f[:, 0] - f[:, 1]).mean()), "es_blowups": int(blown),
                 "loss_end": float(np.median(last)) if last else float("nan")}
        return xp.asarray(grad, dtype=t.dtype), stats

    def close(self):
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
