"""What every meta-training loop shares: Adam on the meta-parameters, clipping,
experience replay of target-net states, and meta-parameter checkpoints.

* :class:`MetaAdam` -- Adam (Kingma & Ba 2015) on one flat meta-parameter
  vector, with L2 regularisation added to the gradient (MLHF: 2e-7) and the
  gradient clipped by its global norm before the update.
* :class:`ReplayBuffer` -- experience replay of target-net weights (MLHF
  section 3.1, after Mnih et al. 2015): at each meta-iteration, with
  probability ``reset_prob`` training restarts from a stored state (or from a
  fresh initialisation) and every recurrent state is zeroed.
* :func:`save_meta` / :func:`load_meta` -- the meta-parameters of a learned
  optimizer with the configuration needed to use them, in one HDF5 file
  (written atomically by :mod:`hfmeta.storage`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from ..errors import UserError
from ..storage import load_checkpoint, save_checkpoint
from .bank import LSTMBank

META_FORMAT = 1


def clip_by_global_norm(grad, max_norm):
    """Scale ``grad`` in place so that ``‖grad‖ ≤ max_norm``; returns the norm before."""
    xp = backend.get_array_module(grad)
    norm = float(xp.linalg.norm(grad))
    if max_norm and norm > max_norm:
        grad *= max_norm / norm
    return norm


class MetaAdam:
    """Adam on a flat meta-parameter vector ``theta``::

        ĝ = clip(g + l2 · θ, max_norm)
        m ← β₁ m + (1 − β₁) ĝ,   v ← β₂ v + (1 − β₂) ĝ²
        θ ← θ − lr · m̂ / (sqrt(v̂) + ε)      (bias-corrected m̂, v̂)
    """

    def __init__(self, size, lr=1e-3, l2=2e-7, max_norm=1.0, beta1=0.9, beta2=0.999,
                 eps=1e-8, xp=np, dtype=np.float64):
        self.lr, self.l2, self.max_norm = lr, l2, max_norm
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = xp.zeros(size, dtype=dtype)
        self.v = xp.zeros(size, dtype=dtype)
        self.t = 0

    def update(self, theta, grad, max_norm=None):
        """Return the updated ``theta`` (a new array) and the gradient norm before clipping;
        ``max_norm``: this update's clip threshold (None: the constructor's)."""
        xp = backend.get_array_module(theta)
        g = grad + self.l2 * theta
        norm = clip_by_global_norm(g, self.max_norm if max_norm is None else max_norm)
        self.t += 1
        self.m *= self.beta1
        self.m += (1 - self.beta1) * g
        self.v *= self.beta2
        self.v += (1 - self.beta2) * g * g
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return theta - self.lr * m_hat / (xp.sqrt(v_hat) + self.eps), norm

    def state_dict(self):
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, d, xp=np):
        self.m, self.v, self.t = xp.asarray(d["m"]), xp.asarray(d["v"]), int(d["t"])


class ReplayBuffer:
    """Stored target-net weights for experience replay (host copies).

    ``store(w)`` keeps a copy (oldest dropped beyond ``capacity``);
    ``sample(rng, fresh)`` returns a stored state, or ``fresh()`` -- a new
    initialisation -- with probability ``1 / (len + 1)``, so fresh starts keep
    appearing as the buffer fills.  (The released MLHF code's store condition
    never fires.  The L2L/SLSTM trainer stores every fresh initialisation it
    draws and, every ``store_every`` meta-iterations, the current weights; the
    MLHF trainer stores only the weights an unroll starts from, every
    ``store_every`` meta-iterations -- a fresh initialisation only when it
    falls on such an iteration.)
    """

    def __init__(self, capacity=200):
        self.capacity = int(capacity)
        self.items = []

    def __len__(self):
        return len(self.items)

    def store(self, w):
        self.items.append(backend.asnumpy(w).copy())
        if len(self.items) > self.capacity:
            self.items.pop(0)

    def sample(self, rng, fresh):
        k = int(rng.integers(0, len(self.items) + 1))
        return fresh() if k == len(self.items) else self.items[k].copy()


def draws_state(rng, batches):
    """What a meta-parameter file keeps of a meta-training's randomness and data, so
    that ``--resume`` goes on to new draws and batches: the ``numpy.random.Generator``
    and the batch stream's position (when ``batches`` is a
    :class:`~hfmeta.data.BatchIterator`; a plain iterator has none)."""
    saved = {"rng": rng}
    if hasattr(batches, "state_dict"):
        saved["batches"] = batches.state_dict()
    return saved


def restore_draws(extra, rng, batches):
    """The generator to continue with, after moving ``batches`` to its saved position
    (:func:`draws_state`; files written before either was saved keep ``rng`` and the
    stream as they are)."""
    if "batches" in extra and hasattr(batches, "load_state_dict"):
        batches.load_state_dict(extra["batches"])
    return extra.get("rng", rng)


def save_meta(path, method, config, banks, extra=None):
    """Write a learned optimizer's meta-parameters.

    ``banks`` is ``{name: (LSTMBank, theta)}`` (MLHF: ``{"rnn_s": ..., "rnn_p": ...}``);
    ``config`` holds everything needed to use them (method hyper-parameters,
    the meta-training batch size ``b_mt``, the model it was trained on, the
    command that produced it).  ``extra`` is stored alongside (e.g. Adam state).
    """
    groups = {name: bank.to_dict(theta) for name, (bank, theta) in banks.items()}
    save_checkpoint(path, config={"method": method, "meta_format": META_FORMAT, **config},
                    banks={name: {"theta": d["theta"],
                                  "bank_config": json.dumps(d["config"], sort_keys=True)}
                           for name, d in groups.items()},
                    extra=extra or {})


def load_meta(path, method=None, xp=np, dtype=None):
    """Read :func:`save_meta`'s file; returns ``(config, {name: (bank, theta)}, extra)``."""
    if not os.path.exists(path):
        raise UserError(f"meta-parameter file {path} does not exist")
    ck = load_checkpoint(path)
    config = ck.get("config") or {}
    if "method" not in config or "banks" not in ck:
        raise UserError(f"{path} is not a meta-parameter checkpoint")
    if method is not None and config["method"] != method:
        raise UserError(f"{path} holds {config['method']} meta-parameters, not {method}")
    banks = {}
    for name, group in ck["banks"].items():
        bank, theta = LSTMBank.from_dict({"config": json.loads(group["bank_config"]),
                                          "theta": group["theta"]}, xp, dtype)
        banks[name] = (bank, theta)
    return config, banks, ck.get("extra", {})

