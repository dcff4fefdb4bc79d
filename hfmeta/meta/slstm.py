"""SLSTM: learning second-order back-propagation with LSTMs (Roy & Todorovic, ICPR 2018).

What the slides fix::

    [u_t, state_{t+1}] = LSTM(g_t, h_t, state_t),     θ_{t+1} = θ_t + u_t

with h_t the diagonal second derivatives of the mini-batch loss, one LSTM of
two 20-unit layers per CNN layer (separate ones for conv and fc layers), LSTM
and CNN learned jointly by BPTT, and an LSTM learned on a small net (1 conv +
1 fc) transferring to a bigger one (3 conv + 2 fc).

The defaults taken for what they leave open (METHODS.md):

* h from the Becker–LeCun pass of second derivatives (``diagonal="becker-lecun"``:
  one extra backward pass -- the slides' "second-order back-propagation");
  ``"exact-ggn"``, ``"mc-ggn"``, ``"hutchinson"`` are options
  (:data:`hfmeta.optim.sou.DIAGONALS`; random ones draw from
  ``default_rng([seed, t])``);
* inputs ``logsign(g)`` (two features, p = 10) and ``log(h)`` (one feature:
  log(max(h, 0) + e^−p)/p: a negative Hutchinson estimate counts as 0),
  output × 0.1, as L2L;
* meta-loss, unroll and meta-training as L2L (gradients and h constants).

**Groups**: one LSTM per layer, named by type and position in the network:
``conv0, conv1, ..., fc0, fc1, ..., bn0, ...``.  A layer's weight and bias
live in different kind slices of the flat vector, so SLSTM works in its own
coordinate order (:class:`~hfmeta.meta.unroll.CoordinateGroups`: gather by a
permutation on the way in, scatter on the way out).

**Transfer** (:func:`~hfmeta.meta.unroll.match_groups`): each target layer uses
the source LSTM of the same type at the same position, or the source's last
LSTM of that type when the target has more such layers (cnn-small → cnn-big:
conv0, conv1, conv2 ← conv0; fc0, fc1 ← fc0); a type the source lacks is a
:class:`UserError` naming the layer.

**Two modes**:

* offline -- :class:`MetaTrainer` on the meta split, then :meth:`SLSTM.from_meta`
  on a fresh net (meta-parameters fixed);
* joint (``joint=True``) -- the LSTMs keep learning while the CNN trains:
  after every ``T`` steps the optimizer takes one Adam step
  (``meta_lr``, clipping ``max_grad_norm``) on the meta-loss of the unroll it
  has just seen.  The gradient at the first step after the unroll is the last
  term of that meta-loss, so no extra evaluations are needed.  The
  meta-parameters, their Adam moments, the LSTM state at the start of the
  unroll and the unroll's inputs and losses are all in the optimizer state;
  the LSTM forward of the unroll is recomputed for BPTT at the update, so a
  checkpoint taken anywhere resumes exactly.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..checks import COUNT, FLAG, NONNEGATIVE, Choice, optional
from ..optim.sou import DIAGONALS
from . import l2l
from .common import MetaAdam
from .preprocess import Log, LogSign
from .unroll import meta_gradient


class SLSTM(l2l.L2L):
    """SLSTM update rule; ``joint=True`` meta-learns online while training.

    State: ``t``, the LSTM states ``lstm.{group}.{layer}.h|c``; in joint mode
    also ``meta.theta``, Adam's ``meta.m``, ``meta.v``, ``meta.t``, the
    unroll buffer ``joint.n``, ``joint.start.*`` (LSTM state at the start of
    the unroll), ``joint.{j}.in{i}`` (inputs g, h of step j) and ``joint.{j}.loss``.
    """

    name = "slstm"
    defaults = {**l2l.L2L.defaults, "diagonal": "becker-lecun", "samples": 1,
                "joint": False, "T": 20, "meta_lr": 1e-3, "max_grad_norm": 1.0}
    ranges = {**l2l.L2L.ranges, "diagonal": Choice(tuple(DIAGONALS)), "samples": COUNT,
              "joint": FLAG, "T": COUNT, "meta_lr": NONNEGATIVE,
              "max_grad_norm": optional(NONNEGATIVE)}
    per_layer = True
    meta_keys = l2l.L2L.meta_keys + ("diagonal", "samples")

    def __init__(self, model, bank=None, theta=None, source="the meta-parameters", **hparams):
        super().__init__(model, bank, theta, source, **hparams)

    def preprocessors(self):
        return [LogSign(self.p), Log(self.p)]

    def inputs(self, problem, lin, g, batch, t):
        """``[g, h]`` with h the diagonal second derivatives at the same point and batch."""
        rng = np.random.default_rng([int(self.seed), int(t)])
        h = DIAGONALS[self.diagonal](lin, problem.loss_fn, batch[1], int(self.samples), rng)
        return [g, h]

    # -- joint mode ------------------------------------------------------------------
    def init(self, w) -> dict:
        state = super().init(w)
        if self.joint:
            xp = backend.get_array_module(w)
            theta = xp.array(self.theta, dtype=w.dtype)
            state.update({"meta.theta": theta, "meta.m": xp.zeros_like(theta),
                          "meta.v": xp.zeros_like(theta), "meta.t": 0, "joint.n": 0})
        return state

    def step(self, problem, w, state, batch):
        if not self.joint:
            return super().step(problem, w, state, batch)
        f, g, lin = self.gradient(problem, w, batch)
        inputs = self.inputs(problem, lin, g, batch, state["t"])
        info = {"loss": float(f)}
        if state["joint.n"] == int(self.T):
            info.update(self._online_update(state, float(f), g))
        n = state["joint.n"]
        if n == 0:                          # a new unroll starts from the current LSTM state
            state.update(self.rule.state_to_flat(self.rule.state_from_flat(state), "joint.start."))
        for i, v in enumerate(inputs):
            state[f"joint.{n}.in{i}"] = v
        state[f"joint.{n}.loss"] = float(f)
        state["joint.n"] = n + 1
        u = self._apply(state["meta.theta"], state, inputs)
        state["t"] += 1
        info["step_norm"] = self.norm(u)
        return w + u, state, info

    def _online_update(self, state, f, g):
        """One Adam step on the meta-loss of the buffered unroll; empties the buffer.

        The unroll's steps j = 0..k−1 are replayed from ``joint.start.*`` with
        the stored inputs (same meta-parameters, so the same outputs) to get
        the caches; the later gradients are g of steps 1..k−1 and ``g`` of the
        current step, whose loss ``f`` closes the meta-loss.
        """
        k, theta = int(self.T), state["meta.theta"]
        n_in = len(self.rule.preprocs)
        states, caches = self.rule.state_from_flat(state, "joint.start."), []
        for j in range(k):
            _, states, cache = self.rule.forward(theta, states,
                                                 [state[f"joint.{j}.in{i}"] for i in range(n_in)])
            caches.append(cache)
        later_grads = [state[f"joint.{j}.in0"] for j in range(1, k)] + [g]
        d_theta = meta_gradient(self.rule, theta, caches, later_grads, 1.0 / k)
        xp = backend.get_array_module(theta)
        adam = MetaAdam(theta.size, lr=self.meta_lr, l2=0.0, max_norm=self.max_grad_norm,
                        xp=xp, dtype=theta.dtype)
        adam.load_state_dict({"m": state["meta.m"], "v": state["meta.v"], "t": state["meta.t"]}, xp)
        state["meta.theta"], norm = adam.update(theta, d_theta)
        state["meta.m"], state["meta.v"], state["meta.t"] = adam.m, adam.v, adam.t
        meta_loss = float(np.mean([state[f"joint.{j}.loss"] for j in range(1, k)] + [f]))
        for key in [key for key in state if key.startswith("joint.") and key != "joint.n"]:
            del state[key]
        state["joint.n"] = 0
        return {"meta_loss": meta_loss, "meta_grad_norm": norm}


class MetaTrainer(l2l.MetaTrainer):
    """Offline SLSTM meta-training (as L2L's, with h among the constant inputs)."""

    optimizer_cls = SLSTM
