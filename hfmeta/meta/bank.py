"""One coordinate-wise LSTM per parameter group, meta-parameters in one flat vector.

MLHF keeps separate meta-parameters for each of the six parameter kinds
(conv.weight, conv.bias, fc.weight, fc.bias, bn.gamma, bn.beta; Chen et al.
2019, section 3); SLSTM keeps one LSTM per layer (Roy & Todorovic 2018).
An :class:`LSTMBank` holds one :class:`CoordinateLSTM` per group name and lays
their ``theta`` end to end in one flat vector (so Adam on the meta-parameters
works on one vector): ``theta[bank.theta_slices[name]]`` is group ``name``'s.

The coordinates are the rows of one input array ``x`` (N, i) built from flat
vectors; each group owns a *contiguous* slice of rows given by the caller as
``row_slices = {name: slice}`` (``ParamLayout.kind_slice`` for MLHF).  Groups
missing from ``row_slices`` (a net without batch norm) are skipped; rows
outside every slice get output 0 and input cotangent 0.  States and caches
are dicts keyed by group.

Like the layers, the bank holds no meta-parameters itself: ``theta`` is passed
in, so one bank can be evaluated at many points (finite differences, Adam).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import backend
from .lstm import CoordinateLSTM

FORMAT_VERSION = 1


class BankCache(NamedTuple):
    """What :meth:`LSTMBank.step` keeps for the backward pass."""
    n_rows: int            # N, the rows of x
    groups: dict           # {group: CoordinateLSTM cache}


class LSTMBank:
    """``{group name: CoordinateLSTM}`` with one flat meta-parameter vector.

    All groups share the input width ``n_inputs`` and output width ``n_outputs``
    (they read columns of one ``x`` and write columns of one output); hidden
    sizes may differ.
    """

    def __init__(self, lstms: dict):
        if not lstms:
            raise ValueError("an LSTMBank needs at least one group")
        self.lstms = dict(lstms)
        first = next(iter(self.lstms.values()))
        self.n_inputs, self.n_outputs = first.n_inputs, first.n_outputs
        self.theta_slices, offset = {}, 0
        for name, lstm in self.lstms.items():
            if (lstm.n_inputs, lstm.n_outputs) != (self.n_inputs, self.n_outputs):
                raise ValueError(f"group {name!r}: inputs/outputs differ from the first group's")
            self.theta_slices[name] = slice(offset, offset + lstm.size)
            offset += lstm.size
        self.size = offset

    @classmethod
    def uniform(cls, groups, n_inputs: int, hidden=(4, 4), n_outputs: int = 1):
        """The same LSTM shape for every group name in ``groups``."""
        return cls({name: CoordinateLSTM(n_inputs, hidden, n_outputs) for name in groups})

    @property
    def groups(self) -> list:
        return list(self.lstms)

    def __repr__(self):
        return f"LSTMBank({self.groups}, {self.size} meta-parameters)"

    def views(self, theta) -> dict:
        """``{group: theta slice}`` (views)."""
        return {name: theta[sl] for name, sl in self.theta_slices.items()}

    def init(self, rng: np.random.Generator, xp=np, dtype=np.float64, out_bias: float = 0.0):
        """Flat ``theta``: each group's :meth:`CoordinateLSTM.init` in group order."""
        parts = [lstm.init(rng, np, np.float64, out_bias) for lstm in self.lstms.values()]
        return xp.asarray(np.concatenate(parts), dtype=dtype)

    def _active(self, row_slices):
        for name, rows in row_slices.items():
            if name not in self.lstms:
                raise KeyError(f"no LSTM for group {name!r}; the bank has {self.groups}")
            yield name, self.lstms[name], self.theta_slices[name], rows

    def zero_state(self, row_slices: dict, xp=np, dtype=np.float64) -> dict:
        """``{group: zero state}`` sized by each group's rows."""
        return {name: lstm.zero_state(_n_rows(rows), xp, dtype)
                for name, lstm, _, rows in self._active(row_slices)}

    def step(self, theta, states: dict, x, row_slices: dict, out=None, keep_cache=True):
        """Run every group's LSTM on its rows of ``x`` (N, i).

        Returns ``(out, new_states, cache)``: ``out`` (N, o) raw outputs
        (each group writes its row slice in place), ``new_states`` keyed by
        group, ``cache`` a :class:`BankCache` (``None`` with ``keep_cache=False``,
        inference without a backward, see :meth:`CoordinateLSTM.step`).
        """
        xp = backend.get_array_module(x)
        if out is None:
            out = xp.zeros((x.shape[0], self.n_outputs), dtype=x.dtype)
        new_states, caches = {}, {}
        for name, lstm, tsl, rows in self._active(row_slices):
            _, new_states[name], caches[name] = lstm.step(theta[tsl], states[name], x[rows],
                                                          out=out[rows], keep_cache=keep_cache)
        return out, new_states, (BankCache(x.shape[0], caches) if keep_cache else None)

    def backward_step(self, theta, cache: BankCache, d_out, d_states, row_slices: dict,
                      d_theta=None):
        """Reverse one :meth:`step`; returns ``(d_theta, d_x, d_states_prev)``.

        ``d_out`` (N, o) or None; ``d_states`` ``{group: state cotangent}`` or
        None.  Meta-parameter cotangents are added into ``d_theta`` (made if None).
        """
        xp = backend.get_array_module(theta)
        if d_theta is None:
            d_theta = xp.zeros_like(theta)
        d_x = xp.zeros((cache.n_rows, self.n_inputs), dtype=theta.dtype)
        d_states_prev = {}
        for name, lstm, tsl, rows in self._active(row_slices):
            _, d_x[rows], d_states_prev[name] = lstm.backward_step(
                theta[tsl], cache.groups[name], None if d_out is None else d_out[rows],
                None if d_states is None else d_states.get(name), d_theta[tsl])
        return d_theta, d_x, d_states_prev

    def backward(self, theta, caches, d_outs, row_slices: dict, d_final_states=None,
                 consume=False):
        """BPTT over T steps; returns ``(d_theta, d_xs, d_initial_states)``.

        ``consume=True`` (meta-training, whose RNN inputs are stop-gradient
        constants) empties ``caches[t]`` and ``d_outs[t]`` as soon as step t's
        backward has run and keeps no input cotangents (``d_xs`` all None), so
        memory falls during the BPTT instead of growing by T of them.
        """
        if len(caches) != len(d_outs):
            raise ValueError(f"{len(caches)} caches but {len(d_outs)} output cotangents")
        xp = backend.get_array_module(theta)
        d_theta = xp.zeros_like(theta)
        d_xs = [None] * len(caches)
        d_states = d_final_states
        for t in reversed(range(len(caches))):
            _, d_x, d_states = self.backward_step(theta, caches[t], d_outs[t], d_states,
                                                  row_slices, d_theta)
            if consume:
                caches[t] = d_outs[t] = None
            else:
                d_xs[t] = d_x
        return d_theta, d_xs, d_states

    # -- checkpoints ----------------------------------------------------------
    def to_dict(self, theta) -> dict:
        """``{"config": JSON-serialisable dict, "theta": host float array}``."""
        config = {"format_version": FORMAT_VERSION,
                  "groups": [{"name": name, **lstm.config()} for name, lstm in self.lstms.items()]}
        return {"config": config, "theta": backend.asnumpy(theta).copy()}

    @classmethod
    def from_dict(cls, d: dict, xp=np, dtype=None):
        """Inverse of :meth:`to_dict`: returns ``(bank, theta)``."""
        config = d["config"]
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported LSTMBank format {config.get('format_version')!r}")
        bank = cls({g["name"]: CoordinateLSTM(g["n_inputs"], tuple(g["hidden"]), g["n_outputs"])
                    for g in config["groups"]})
        theta = np.asarray(d["theta"])
        if theta.shape != (bank.size,):
            raise ValueError(f"theta has shape {theta.shape}, the bank needs ({bank.size},)")
        return bank, xp.asarray(theta, dtype=dtype or theta.dtype)


def _n_rows(rows: slice) -> int:
    if rows.stop is None or rows.step not in (None, 1):
        raise ValueError(f"row slices need an explicit stop and step 1, got {rows}")
    return rows.stop - (rows.start or 0)
