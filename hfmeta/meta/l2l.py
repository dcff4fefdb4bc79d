"""L2L: "Learning to learn by gradient descent by gradient descent" (Andrychowicz et al. 2016).

A coordinate-wise LSTM proposes every coordinate's update from its gradient::

    x_t     = logsign(g_t)       (log|g|/p, sign g) if |g| ≥ e^−p else (−1, e^p g), p = 10
    y_t     = LSTM(x_t, state)   two layers of 20 units, one output
    θ_{t+1} = θ_t + 0.1 · y_t

One LSTM per layer *type* (groups ``conv``, ``fc``, ``bn``): Andrychowicz et
al. used separate LSTMs for the convolutional and fully connected layers on
CIFAR-10; every coordinate of a type shares that LSTM's meta-parameters and
keeps its own state.

Meta-training (:class:`MetaTrainer`): unrolls of T = 20 steps, meta-loss the
mean training loss along the unroll with the gradients treated as constants
(:mod:`hfmeta.meta.unroll`), BPTT through the LSTM, Adam 1e-3 on the
meta-parameters (:class:`~hfmeta.meta.common.MetaAdam`), experience replay
and random resets of the target net (:class:`~hfmeta.meta.common.ReplayBuffer`).

Transfer: meta-parameters trained on one model serve any model whose layer
types they cover (cnn-small → cnn-big); a type they lack (e.g. ``bn``) is a
:class:`UserError`.  SLSTM (:mod:`hfmeta.meta.slstm`) subclasses both classes.
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np

from .. import backend
from ..checks import (COUNT, FLAG, NATURAL, NONNEGATIVE, POSITIVE, SIZES, Range,
                      check_options, check_representable, optional)
from ..errors import UserError
from ..optim.base import Optimizer
from .bank import LSTMBank
from .common import MetaAdam, ReplayBuffer, draws_state, load_meta, restore_draws, save_meta
from .preprocess import LogSign, Scale
from .registry import shipped_path
from .unroll import CoordinateGroups, CoordinateRule, meta_gradient, transfer_bank


def _same(value):
    """A hyper-parameter value as compared with a file's (JSON turns tuples into lists)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


class L2L(Optimizer):
    """The L2L update rule as an optimizer (meta-parameters fixed while training).

    Build with :meth:`from_meta`.  State: ``t`` and the LSTM states
    ``lstm.{group}.{layer}.h|c`` (one row per coordinate, in group order).
    """

    name = "l2l"
    defaults = {"p": 10.0, "scale": 0.1, "hidden": (20, 20), "seed": 0}
    ranges = {"p": POSITIVE, "scale": POSITIVE, "hidden": SIZES, "seed": NATURAL}
    load_options = ("untrained",)                        # taken by from_meta
    per_layer = False
    #: hyper-parameters taken from the meta-parameter file (the LSTMs were trained with them)
    meta_keys = ("p", "scale", "hidden")

    def __init__(self, model, bank=None, theta=None, source="the meta-parameters", **hparams):
        super().__init__(**hparams)
        self.model = model
        self.groups = CoordinateGroups(model.layout, self.per_layer, model.xp)
        preprocs = self.preprocessors()
        if bank is None:         # untrained: fresh LSTMs (forget-gate bias 1, output bias 0)
            n_inputs = sum(pp.n_features for pp in preprocs)
            bank = LSTMBank.uniform(self.groups.names, n_inputs, tuple(self.hidden), 1)
            theta = bank.init(np.random.default_rng(int(self.seed)), model.xp, model.dtype)
        else:
            bank, theta = transfer_bank(bank, theta, self.groups, source)
        self.rule = CoordinateRule(bank, self.groups, preprocs, Scale(self.scale))
        self.theta = theta

    # -- what the subclasses change ------------------------------------------------
    def preprocessors(self):
        return [LogSign(self.p)]

    def inputs(self, problem, lin, g, batch, t):
        """The LSTM inputs at step t (flat vectors, the gradient first): ``[g]``."""
        return [g]

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_meta(cls, path, model, untrained=False, **hparams):
        """Load meta-parameters from ``path`` (None: the shipped file) and fit them to ``model``.

        ``untrained=True`` with ``path=None`` gives freshly initialised LSTMs.
        """
        FLAG.check(cls.name, "untrained", untrained)
        if path is None:
            if untrained:
                return cls(model, **hparams)
            path = shipped_path(cls.name)
            if not os.path.exists(path):
                raise UserError(f"{cls.name}: no meta-parameters are shipped ({path}); meta-train "
                                f"first (hfmeta meta-train {cls.name}) and pass the file with "
                                f"--meta, or use untrained=True")
        elif untrained:
            raise UserError(f"{cls.name}: give a meta-parameter file or untrained=True, not both")
        config, banks, _ = load_meta(path, cls.name, model.xp, model.dtype)
        if "lstm" not in banks:
            raise UserError(f"{path} holds no 'lstm' meta-parameters")
        saved = {k: v for k, v in config.get("hparams", {}).items() if k in cls.meta_keys}
        changed = [k for k in saved if k in hparams and _same(hparams[k]) != _same(saved[k])]
        if changed:
            raise UserError(f"{cls.name}: {', '.join(changed)} come(s) from the meta-parameter "
                            f"file {path} ({', '.join(f'{k}={saved[k]!r}' for k in changed)}); "
                            f"the LSTMs were trained with them")
        bank, theta = banks["lstm"]
        source = f"{path} (meta-trained on {config.get('model', 'an unknown model')})"
        return cls(model, bank=bank, theta=theta, source=source, **{**saved, **hparams})

    # -- the optimizer interface ------------------------------------------------------
    def init(self, w) -> dict:
        xp = backend.get_array_module(w)
        return {"t": 0, **self.rule.state_to_flat(self.rule.zero_state(xp, w.dtype))}

    def step(self, problem, w, state, batch):
        f, g, lin = self.gradient(problem, w, batch)
        u = self._apply(self.theta, state, self.inputs(problem, lin, g, batch, state["t"]))
        state["t"] += 1
        return w + u, state, {"loss": float(f), "step_norm": self.norm(u)}

    def _apply(self, theta, state, inputs):
        """The update u at the stored LSTM states; the new states go back into ``state``."""
        u, states, _ = self.rule.forward(theta, self.rule.state_from_flat(state), inputs)
        state.update(self.rule.state_to_flat(states))
        return u


class UnrollRecord(NamedTuple):
    """One meta-training unroll: what :func:`~hfmeta.meta.unroll.replay_meta_loss` needs."""
    w0: object            # target-net weights at the start
    states0: dict         # LSTM states at the start
    first_loss: float     # f_0(θ_0)
    inputs: list          # per step, the LSTM inputs [g_t, (h_t)]
    losses: list          # f_1(θ_1) .. f_T(θ_T)
    d_theta: object       # the meta-gradient of mean(losses); None if a loss is not finite


class MetaTrainer:
    """Offline meta-training of :attr:`optimizer_cls` on ``problem``'s model.

    Each iteration: with probability ``reset_prob`` (always at the start, and
    after a non-finite loss) the target net restarts from a replayed state or
    a fresh initialisation with zero LSTM states; then T steps are
    taken with the current meta-parameters, the meta-gradient of the mean loss
    along the unroll is back-propagated (:func:`~hfmeta.meta.unroll.meta_gradient`)
    and Adam updates the meta-parameters.  Without a reset the next unroll
    continues from the last weights and LSTM states (truncated BPTT).  The
    gradient at the last point of an unroll is the first of the next one.

    Options (``defaults``; named as MLHF's trainer names them): ``T`` the
    unroll length, Adam's ``meta_lr``, ``l2``, ``max_grad_norm`` (global-norm
    clipping of the meta-gradient; a stabiliser, not in the paper),
    ``reset_prob`` (0.2: a target net lives about 5 unrolls = 100 steps, the
    length of Andrychowicz et al.'s optimizee runs with truncated BPTT over
    20), ``buffer`` (replay capacity), ``store_every``
    (iterations between stores of the current weights), ``seed`` (resets and
    the initial meta-parameters).  Every other option is a hyper-parameter
    of the optimizer.  ``batches`` yields ``(x, y)`` mini-batches.
    """

    optimizer_cls = L2L
    defaults = {"T": 20, "meta_lr": 1e-3, "l2": 0.0, "max_grad_norm": 1.0, "reset_prob": 0.2,
                "buffer": 200, "store_every": 10, "seed": 0}
    ranges = {"T": COUNT, "meta_lr": NONNEGATIVE, "l2": NONNEGATIVE,
              "max_grad_norm": optional(NONNEGATIVE), "reset_prob": Range(0, 1), "buffer": NATURAL,
              "store_every": COUNT, "seed": NATURAL}

    def __init__(self, problem, batches, **options):
        owner = f"{self.optimizer_cls.name} meta-training"
        check_options(owner, options, self.ranges)
        check_representable(owner, options, self.ranges, problem.model.dtype)
        self.options = {**self.defaults, **{k: v for k, v in options.items() if k in self.defaults}}
        hparams = {k: v for k, v in options.items() if k not in self.defaults}
        self.problem, self.batches = problem, iter(batches)
        model = problem.model
        self.opt = self.optimizer_cls(model, seed=self.options["seed"], **hparams)
        check_representable(owner, self.opt.hparams, self.opt.ranges, model.dtype)
        if self.opt.hparams.get("joint"):
            raise UserError("MetaTrainer meta-trains offline; joint=True belongs to training runs")
        self.theta = self.opt.theta
        self.adam = MetaAdam(self.theta.size, lr=self.options["meta_lr"], l2=self.options["l2"],
                             max_norm=self.options["max_grad_norm"], xp=model.xp,
                             dtype=self.theta.dtype)
        self.rng = np.random.default_rng(self.options["seed"])
        self.replay = ReplayBuffer(self.options["buffer"])
        self.w = self.states = self.head = None     # target net, LSTM states, (f, inputs) at w
        self.iteration, self.wall, self.observed, self.b_mt = 0, 0.0, 0, None

    # -- one meta-iteration ----------------------------------------------------------
    def run(self, iterations, on_iteration=None, should_stop=None):
        """Run ``iterations`` meta-iterations, fewer if ``should_stop()`` turns true (asked
        before each); returns one dict per iteration (``meta_loss``, ``grad_norm`` before
        clipping, ``first_loss``/``last_loss`` of the unroll, ``reset``, ``seconds``,
        cumulative ``wall``)."""
        records = []
        for _ in range(int(iterations)):
            if should_stop and should_stop():
                break
            start = time.perf_counter()
            reset = self._maybe_reset()
            rec = self._unroll()
            meta_loss = float(np.mean(rec.losses))
            if np.isfinite(meta_loss):
                self.theta, norm = self.adam.update(self.theta, rec.d_theta)
                self.opt.theta = self.theta
            else:                                   # diverged: skip the update, restart
                norm, self.w = float("nan"), None
            self.iteration += 1
            if self.w is not None and self.iteration % int(self.options["store_every"]) == 0:
                self.replay.store(self.w)
            if self.problem.model.device == "gpu":
                self.problem.xp.cuda.Stream.null.synchronize()
            seconds = time.perf_counter() - start
            self.wall += seconds
            record = {"iteration": self.iteration, "meta_loss": meta_loss, "grad_norm": norm,
                      "first_loss": rec.first_loss, "last_loss": rec.losses[-1],
                      "reset": reset, "seconds": seconds, "wall": self.wall}
            records.append(record)
            if on_iteration:
                on_iteration(record)
        return records

    def _maybe_reset(self) -> bool:
        draw = self.rng.random()
        if self.w is not None and draw >= self.options["reset_prob"]:
            return False
        model = self.problem.model
        w = self.replay.sample(self.rng, self._fresh)
        self.w = backend.to_device(np.asarray(backend.asnumpy(w), dtype=model.dtype), model.device)
        self.states = self.opt.rule.zero_state(model.xp, model.dtype)
        self.head = None
        return True

    def _fresh(self):
        w = self.problem.model.init(int(self.rng.integers(2 ** 31)))
        self.replay.store(w)
        return w

    def _observe(self, w):
        """``(f, inputs)`` at ``w`` on the next mini-batch (no batch-norm commit)."""
        batch = next(self.batches)
        if self.b_mt is None:
            self.b_mt = int(batch[0].shape[0])
        f, g, lin = self.problem.loss_and_grad(w, batch)
        inputs = self.opt.inputs(self.problem, lin, g, batch, self.observed)
        self.observed += 1
        return float(f), inputs

    def _unroll(self) -> "UnrollRecord":
        """T steps from ``self.w`` with the current meta-parameters, and the meta-gradient."""
        T = int(self.options["T"])
        if self.head is None:
            self.head = self._observe(self.w)
        rec = UnrollRecord(self.w, self.states, self.head[0], [], [], None)
        w, states, caches, later_grads = self.w, self.states, [], []
        for _ in range(T):
            rec.inputs.append(self.head[1])
            u, states, cache = self.opt.rule.forward(self.theta, states, self.head[1])
            caches.append(cache)
            w = w + u
            self.head = self._observe(w)
            rec.losses.append(self.head[0])
            later_grads.append(self.head[1][0])
        self.w, self.states = w, states
        if not np.isfinite(np.sum(rec.losses)):
            return rec
        return rec._replace(d_theta=meta_gradient(self.opt.rule, self.theta, caches,
                                                  later_grads, 1.0 / T))

    # -- files ---------------------------------------------------------------------------
    def save(self, path, command="", model_name=None):
        """Write the meta-parameters with what is needed to use and resume them."""
        model = self.problem.model
        config = {"b_mt": self.b_mt, "model": model_name or model.name,
                  "model_options": model.config, "in_shape": list(model.in_shape),
                  "classes": model.classes, "T": self.options["T"], "groups": self.opt.groups.names,
                  "group_layers": self.opt.groups.layers, "hparams": dict(self.opt.hparams),
                  "trainer": dict(self.options), "iterations": self.iteration, "command": command}
        save_meta(path, self.opt.name, config, {"lstm": (self.opt.rule.bank, self.theta)},
                  extra={"adam": self.adam.state_dict(), "iteration": self.iteration,
                         "wall": self.wall, **draws_state(self.rng, self.batches)})

    def resume_from(self, path):
        """Continue meta-training from :meth:`save`'s file: meta-parameters, Adam state,
        iteration count, and the positions of the data stream and of the random draws, so
        a resumed run goes on to new batches and resets (files from before they were saved
        start both afresh).  The replay buffer and the target net under way start afresh
        (the buffer holds up to ``buffer`` copies of the target net's weights, too large to
        checkpoint), so unlike ``hfmeta train --resume`` a resumed meta-training does not
        repeat the uninterrupted one bit for bit."""
        model = self.problem.model
        config, banks, extra = load_meta(path, self.opt.name, model.xp, model.dtype)
        bank, theta = banks["lstm"]
        mine = self.opt.rule.bank
        if [(n, l.config()) for n, l in bank.lstms.items()] != \
                [(n, l.config()) for n, l in mine.lstms.items()]:
            raise UserError(f"{path} holds LSTMs {bank.groups} of sizes "
                            f"{[l.config() for l in bank.lstms.values()]} "
                            f"({config.get('model')}); this meta-training has {mine.groups} of "
                            f"sizes {[l.config() for l in mine.lstms.values()]}")
        self.theta = self.opt.theta = theta
        self.adam.load_state_dict(extra["adam"], model.xp)
        self.iteration = int(extra.get("iteration", 0))
        self.wall = float(extra.get("wall", 0.0))
        self.rng = restore_draws(extra, self.rng, self.batches)
