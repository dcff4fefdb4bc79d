"""The optimizer interface shared by every hand-crafted and learned optimizer.

::

    opt            = get_optimizer("adam", lr=1e-3)
    state          = opt.init(w)                            # flat dict
    w, state, info = opt.step(problem, w, state, batch)     # one training step

* ``w`` is the flat parameter vector (:mod:`hfmeta.params`); ``problem`` is a
  :class:`hfmeta.problem.Problem` and ``batch`` an ``(x, y)`` pair on the
  model's device.
* ``state`` is a dict ``{str: array or Python scalar}``: vectors like
  ``w`` (moments, previous CG solution), small matrices (K-FAC factors) and
  scalars (step count, damping).  :meth:`Optimizer.state_to_dict` gives the
  flat host (NumPy) copy a checkpoint stores in HDF5, and
  :meth:`Optimizer.state_from_dict` puts it back on a device, so a resumed
  run continues bit for bit.  An optimizer whose state nests (MLHF's LSTM
  states, entries that are ``None`` before the first step) overrides both to
  flatten and rebuild it.  Randomness (K-FAC's sampled labels) is drawn
  from ``numpy.random.default_rng([seed, step])``, so it needs no RNG state.
* ``step`` may update the arrays of ``state`` in place and returns the state
  to use next; do not reuse the state passed in.  It returns a *new* ``w``.
* ``info`` is a dict of Python floats a user wants logged: always ``loss``
  (the mini-batch loss at the incoming ``w``) and ``step_norm`` (‖Δw‖), plus
  what the method has (damping, CG iterations, ρ, ...).
* **Batch-norm running statistics**: ``step`` calls
  ``problem.commit_state(lin)`` exactly once per step, with the linearization
  at ``(w, batch)`` that produced the gradient (:meth:`Optimizer.gradient`
  does it).  Other evaluations (line searches, ρ, curvature mini-batches)
  never touch the running statistics.  The training loop must not commit again.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..checks import check_options
from ..errors import UserError


class Optimizer:
    """Base class: hyper-parameters, the flat state dict, the gradient call.

    Subclasses set ``name``, ``defaults`` (every hyper-parameter with its
    default value) and ``ranges`` (the allowed values of the numeric ones, as
    :class:`hfmeta.checks.Range`), and implement :meth:`init` and :meth:`step`.
    A learned optimizer's ``load_options`` name the hyper-parameters its
    ``from_meta`` takes before constructing it (``untrained``, …), so that an
    unknown name's error lists them too.
    """

    name: str = "optimizer"
    defaults: dict = {}
    ranges: dict = {}
    load_options: tuple = ()

    def __init__(self, **hparams):
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            known = list(self.defaults) + list(self.load_options)
            raise UserError(f"{self.name}: unknown hyper-parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(known) or 'none'}")
        check_options(self.name, hparams, self.ranges)
        self.hparams = {**self.defaults, **hparams}

    def __getattr__(self, key):
        # hyper-parameters read as attributes: opt.lr, opt.momentum, ...
        hp = self.__dict__.get("hparams", {})
        if key in hp:
            return hp[key]
        raise AttributeError(key)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    # -- the interface ---------------------------------------------------------
    def init(self, w) -> dict:
        """The state before the first step (a flat dict)."""
        return {"t": 0}

    def step(self, problem, w, state, batch):
        """One step: ``(new w, new state, info)``."""
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------
    @staticmethod
    def gradient(problem, w, batch):
        """``(loss, g, lin)`` at ``(w, batch)``; commits the batch-norm statistics once."""
        f, g, lin = problem.loss_and_grad(w, batch)
        problem.commit_state(lin)
        return f, g, lin

    @staticmethod
    def norm(v) -> float:
        xp = backend.get_array_module(v)
        return float(xp.sqrt(xp.dot(v, v)))

    # -- checkpointing ---------------------------------------------------------
    @staticmethod
    def state_to_dict(state: dict) -> dict:
        """Host copies of the state: NumPy arrays and Python scalars (for HDF5)."""
        out = {}
        for k, v in state.items():
            out[k] = v if isinstance(v, (int, float)) else backend.asnumpy(v).copy()
        return out

    @staticmethod
    def state_from_dict(d: dict, xp=np) -> dict:
        """Inverse of :meth:`state_to_dict`: arrays onto ``xp``'s device, 0-d arrays to scalars."""
        out = {}
        for k, v in d.items():
            if isinstance(v, (int, float)):
                out[k] = v
                continue
            a = np.asarray(v)
            if a.ndim == 0:
                out[k] = int(a) if np.issubdtype(a.dtype, np.integer) else float(a)
            else:
                out[k] = xp.array(a)
        return out
