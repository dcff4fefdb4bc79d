"""Coordinate-wise learned updates ``θ ← θ + c · LSTM(features)`` and their meta-gradient.

Shared by L2L (Andrychowicz et al. 2016) and SLSTM (Roy & Todorovic 2018).
At training step t, with the mini-batch loss f_t and its gradient
g_t = ∇f_t(θ_t)::

    x_t          = preprocess(g_t[, h_t])          (N, k)   one row per coordinate
    y_t, state   = LSTM_bank(x_t, state)           (N, 1)
    u_t          = c · y_t                          c = 0.1
    θ_{t+1}      = θ_t + u_t

**Meta-loss** of an unroll of T steps from θ_0 (Andrychowicz et al. 2016,
eq. 3 with w_t = 1, divided by T so that its value reads as a training loss)::

    L(φ) = (1/T) Σ_{t=1..T} f_t(θ_t)

with the LSTM inputs (g_t, and h_t for SLSTM) treated as **constants**: no
second derivatives of f.  Then θ_t = θ_0 + Σ_{s<t} u_s gives

    ∂L/∂u_s = (1/T) Σ_{t=s+1..T} g_t          (suffix sums of the later gradients)

and BPTT through the LSTM over the unroll (states *not* stopped) turns these
output cotangents into ∂L/∂φ (:func:`meta_gradient`).
:func:`replay_meta_loss` is that same L evaluated with the recorded inputs held
fixed -- what the finite-difference tests difference.

The coordinates of the flat vector are split into groups, each updated by its
own LSTM of an :class:`~hfmeta.meta.bank.LSTMBank`; a group must be a
contiguous row range, so :class:`CoordinateGroups` may reorder the coordinates
(a permutation gathered on the way in and scattered on the way out).
The optimizer and meta-trainer built on this are :class:`hfmeta.meta.l2l.L2L`
and :class:`hfmeta.meta.l2l.MetaTrainer`; SLSTM (:mod:`hfmeta.meta.slstm`)
subclasses both.
"""
from __future__ import annotations

import re

import numpy as np

from .. import backend
from ..errors import UserError
from .bank import LSTMBank
from .preprocess import build_inputs

#: layer types in the order their groups are laid out (the flat vector's kind order)
TYPES = ("conv", "fc", "bn")


def param_type(kind: str) -> str:
    """``"conv.weight"`` → ``"conv"``."""
    return kind.split(".")[0]


class CoordinateGroups:
    """Which coordinates of the flat vector each LSTM of the bank updates.

    ``per_layer=False`` (L2L): one group per layer *type*, named ``conv``,
    ``fc``, ``bn``; a type's kinds (weight and bias) are adjacent in the flat
    vector, so the groups are contiguous and no permutation is needed.

    ``per_layer=True`` (SLSTM): one group per *layer*, named by type and
    position in the network, ``conv0, conv1, ..., fc0, ..., bn0, ...``.  A
    layer's weight and bias live in different kind slices, so the rows are
    permuted to make each layer contiguous: row r of the LSTM input is
    coordinate ``perm[r]`` of the flat vector.

    Attributes: ``names`` (group order), ``row_slices`` ``{group: slice}``
    (rows in the group order), ``layers`` ``{group: [layer names]}``,
    ``perm`` (int array on the model's device, or None for the identity).
    """

    def __init__(self, layout, per_layer: bool, xp=np):
        members, self.layers, counts, type_of_layer = {}, {}, {}, {}
        for spec in layout.specs:               # kind order; network order within a kind
            t = param_type(spec.kind)
            if per_layer:
                if spec.layer not in type_of_layer:
                    type_of_layer[spec.layer] = (t, f"{t}{counts.get(t, 0)}")
                    counts[t] = counts.get(t, 0) + 1
                elif type_of_layer[spec.layer][0] != t:
                    raise UserError(f"layer {spec.layer!r} holds both "
                                    f"{type_of_layer[spec.layer][0]} and {t} parameters; "
                                    f"one LSTM per layer needs one type")
                group = type_of_layer[spec.layer][1]
            else:
                group = t
            members.setdefault(group, []).append(spec)
            if spec.layer not in self.layers.setdefault(group, []):
                self.layers[group].append(spec.layer)
        self.names = list(members)
        rows, self.row_slices, start = [], {}, 0
        for group in self.names:
            for spec in members[group]:
                rows.append(np.arange(spec.offset, spec.offset + spec.size))
            size = sum(s.size for s in members[group])
            self.row_slices[group] = slice(start, start + size)
            start += size
        rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        identity = np.array_equal(rows, np.arange(layout.size))
        self.perm = None if identity else xp.asarray(rows)

    def gather(self, v):
        """Flat vector (model order) → rows (group order)."""
        return v if self.perm is None else v[self.perm]

    def scatter(self, rows):
        """Rows (group order) → flat vector (model order); ``perm`` has unique indices."""
        if self.perm is None:
            return rows
        xp = backend.get_array_module(rows)
        out = xp.empty_like(rows)
        out[self.perm] = rows
        return out


def group_type(group: str) -> str:
    """``"conv2"`` → ``"conv"``."""
    return re.match(r"[a-z]+", group).group()


def match_groups(groups: CoordinateGroups, source: list, source_name: str) -> dict:
    """Transfer rule: which source LSTM serves each target group.

    A target group uses the source group of the same name (same type, same
    position); when the target has more layers of a type than the source, the
    extra ones use the source's *last* group of that type (e.g. cnn-small →
    cnn-big: conv0 → conv0, conv1 → conv0, conv2 → conv0; fc0 → fc0, fc1 → fc0).
    A type the source lacks is a :class:`UserError` naming the layer.
    """
    mapping = {}
    for group in groups.names:
        if group in source:
            mapping[group] = group
            continue
        t = group_type(group)
        same = [s for s in source if group_type(s) == t]
        if not same:
            raise UserError(f"{source_name} has no LSTM for {t} layers, but layer "
                            f"{groups.layers[group][0]!r} (group {group}) is one; meta-train "
                            f"on a model with {t} layers")
        mapping[group] = same[-1]
    return mapping


def transfer_bank(bank: LSTMBank, theta, groups: CoordinateGroups, source_name: str):
    """A bank with one LSTM per target group, copied from the source by :func:`match_groups`."""
    mapping = match_groups(groups, bank.groups, source_name)
    new = LSTMBank({g: bank.lstms[mapping[g]] for g in groups.names})
    xp = backend.get_array_module(theta)
    return new, xp.concatenate([theta[bank.theta_slices[mapping[g]]] for g in groups.names])


class CoordinateRule:
    """``u = post(bank(preprocess(inputs)))`` on flat vectors: the learned update rule.

    ``inputs`` is a list of flat vectors (model order), one per preprocessor:
    ``[g]`` for L2L, ``[g, h]`` for SLSTM.  States are the bank's
    ``{group: [(h, c), ...]}`` in row (group) order.
    """

    def __init__(self, bank: LSTMBank, groups: CoordinateGroups, preprocs, post):
        self.bank, self.groups, self.preprocs, self.post = bank, groups, list(preprocs), post
        n_features = sum(pp.n_features for pp in self.preprocs)
        if bank.n_inputs != n_features or bank.n_outputs != 1:
            raise UserError(f"the LSTMs take {bank.n_inputs} inputs and give {bank.n_outputs} "
                            f"outputs; this rule needs {n_features} and 1")

    def zero_state(self, xp=np, dtype=np.float64) -> dict:
        return self.bank.zero_state(self.groups.row_slices, xp, dtype)

    def forward(self, theta, states, inputs):
        """``(u, new_states, cache)``: the update u (flat, model order)."""
        x = build_inputs(self.preprocs, [self.groups.gather(v) for v in inputs])
        y, states, cache = self.bank.step(theta, states, x, self.groups.row_slices)
        return self.groups.scatter(self.post.forward(y[:, 0])), states, cache

    def backward_step(self, theta, cache, d_u, d_states, d_theta):
        """Reverse one :meth:`forward` given ū (flat); adds into ``d_theta``, returns the
        cotangent of the state the step started from.  The inputs get no cotangent
        (they are constants of the meta-loss)."""
        d_y = self.post.backward(None, self.groups.gather(d_u))[:, None]
        _, _, d_states = self.bank.backward_step(theta, cache, d_y, d_states,
                                                 self.groups.row_slices, d_theta)
        return d_states

    # -- LSTM states as flat dict entries (for optimizer states / checkpoints) --
    def state_to_flat(self, states: dict, prefix: str = "lstm.") -> dict:
        """``{f"{prefix}{group}.{layer}.h" | ".c": array}``."""
        return {f"{prefix}{g}.{l}.{n}": a for g, layers in states.items()
                for l, hc in enumerate(layers) for n, a in zip("hc", hc)}

    def state_from_flat(self, flat: dict, prefix: str = "lstm.") -> dict:
        return {g: [(flat[f"{prefix}{g}.{l}.h"], flat[f"{prefix}{g}.{l}.c"])
                    for l in range(len(lstm.hidden))]
                for g, lstm in self.bank.lstms.items()}


def meta_gradient(rule: CoordinateRule, theta, caches, later_grads, weight: float):
    """∂L/∂φ of ``L = weight · Σ_{t=1..T} f_t(θ_t)``, inputs held constant.

    ``caches[s]`` is the cache of step s's :meth:`CoordinateRule.forward`
    (s = 0..T−1, the state chained from step to step); ``later_grads[s]`` is
    g_{s+1} = ∇f_{s+1}(θ_{s+1}).  The output cotangent of step s is
    ``ū_s = weight · Σ_{t>s} g_t``, accumulated backwards alongside BPTT.
    """
    if len(caches) != len(later_grads):
        raise ValueError(f"{len(caches)} steps but {len(later_grads)} later gradients")
    xp = backend.get_array_module(theta)
    d_theta = xp.zeros_like(theta)
    suffix = xp.zeros_like(later_grads[0])
    d_states = None
    for s in reversed(range(len(caches))):
        suffix += later_grads[s]
        d_states = rule.backward_step(theta, caches[s], weight * suffix, d_states, d_theta)
    return d_theta


def replay_meta_loss(rule: CoordinateRule, theta, problem, w0, states0, inputs, batches):
    """The meta-loss with the same stop-gradients, as a plain function of ``theta``.

    Replays ``θ_{t+1} = θ_t + u_t`` from ``(w0, states0)`` with the recorded
    LSTM ``inputs[t]`` held fixed (the LSTM states are *not* frozen) and
    returns ``(1/T) Σ_t f(θ_{t+1}; batches[t])`` -- what :func:`meta_gradient`
    differentiates (with ``later_grads[t]`` the gradients on ``batches[t]``).
    """
    w, states, total = w0, states0, 0.0
    for step_inputs, batch in zip(inputs, batches, strict=True):
        u, states, _ = rule.forward(theta, states, step_inputs)
        w = w + u
        total += float(problem.loss(w, batch))
    return total / len(batches)
