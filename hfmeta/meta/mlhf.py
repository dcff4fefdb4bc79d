"""MLHF: Meta-Learning with Hessian-Free (Chen, Lu & Fokoue, AAAI 2019), Algorithm 1.

Per training step t with mini-batch (x^t, y^t)::

    g   = ∇l(w^t)                                     (gradient, one forward+backward)
    s   = softplus(RNN_s(tanh g, tanh d_prev, tanh r_prev)) + s_min       (damping)
    A v = G v + s ⊙ v                                 (G: Gauss-Newton at (w^t, x^t))
    x0  = d_prev,   r0 = g − A x0
    P   = softplus(RNN_p(tanh g, tanh x0, tanh r0)) + p_min               (preconditioner)
    d, r = PCG(g, A, x0, P, n = 4, eps = 0)           (n + 1 products with A; n at x0 = 0)
    w^{t+1} = w^t − lr · d,   lr = b_tr / b_mt

RNN_s and RNN_p are coordinate-wise two-layer LSTMs of 4 units
(:mod:`hfmeta.meta.lstm`), one set of meta-parameters per parameter kind
(conv.weight, conv.bias, fc.weight, fc.bias, bn.gamma, bn.beta): each kind is
a contiguous slice of the flat vector (:mod:`hfmeta.params`), so a bank group
runs on ``vec[layout.kind_slice(kind)]``.  P is computed once per step from
its inputs and reused in every PCG iteration (released code).

Input preprocessing (option ``inputs``): ``"tanh"`` is the paper's (section
4), the default.  On a CNN the three inputs are mostly 1e-5 .. 1e-1 per
coordinate, where tanh is the identity: the untrained meta-nets then give
the same s and P on every coordinate to four digits, and a meta-training of
a few hundred iterations cannot grow the input weights far enough to make
them differ.  ``"logsign"`` feeds each input as L2L's scale-free pair
(log|v|/10, sign v), or (−1, e^10 v) where |v| < e^−10 (e.g. the zero d_prev,
r_prev of a first step) (Andrychowicz et al. 2016, appendix A; six features),
so a coordinate's damping and preconditioner can depend on the magnitudes of
its g, d_prev and r_prev from the first meta-iteration on (ours; say so).

This module holds the meta-nets (:class:`MLHFNets`), the step shared by
inference and meta-training (:func:`mlhf_direction`), and the optimizer
(:class:`MLHF`).  Meta-training lives in :mod:`hfmeta.meta.mlhf_train`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..checks import COUNT, FLAG, NATURAL, POSITIVE, Choice, Range, check_options, optional
from ..errors import UserError
from ..optim.base import Optimizer
from ..optim.hf import curvature_linearization
from ..params import KINDS
from ..pcg import pcg
from .bank import LSTMBank
from .common import load_meta, save_meta
from .preprocess import LogSign, Softplus, Tanh, build_inputs
from .registry import shipped_path

S_MIN = 2e-5        # s = RNN_s(...) + 2e-5 (METHODS.md, MLHF step 2)
P_MIN = 1e-5        # keeps P > 0 when softplus underflows (ours; say so)
SOFTPLUS = Softplus()
INPUTS = {"tanh": Tanh, "logsign": LogSign}     # the preprocessing of g, d_prev, r_prev


class MLHFNets:
    """RNN_s and RNN_p: two :class:`LSTMBank` s over the six parameter kinds.

    ``theta`` is one flat vector ``[theta_s, theta_p]`` (no ``theta_p`` when
    ``use_rnn_p`` is false, and :meth:`split` gives None for it: the ablation without RNN_p uses P = I).
    ``inputs`` names the preprocessing of the three RNN inputs (module
    docstring): "tanh" (paper) or "logsign".  ``loss_input`` (ours, not the
    paper's) gives RNN_s a fourth input, the same on every coordinate:
    tanh(log(l_t / l_{t−1})), the log-ratio of this step's mini-batch loss to
    the previous step's (0 at the first step) -- what Levenberg–Marquardt
    damping reacts to, so that RNN_s can learn to raise the damping after a
    loss jump.  Meta-trained with the horizon-log objective it barely does
    (``hfmeta/meta/shipped/README.md``: a 60-fold jump moves conv.weight's
    damping 0.25 → 0.26).
    """

    def __init__(self, hidden=(4, 4), kinds=KINDS, use_rnn_p=True, n=4,
                 s_min=S_MIN, p_min=P_MIN, b_mt=64, inputs="tanh", loss_input=False):
        if inputs not in INPUTS:
            raise UserError(f"MLHF inputs={inputs!r}: choose {' or '.join(INPUTS)}")
        self.hidden, self.kinds = tuple(hidden), tuple(kinds)
        self.use_rnn_p, self.n = bool(use_rnn_p), int(n)
        self.s_min, self.p_min, self.b_mt = float(s_min), float(p_min), int(b_mt)
        self.inputs, self.loss_input = inputs, bool(loss_input)
        self.preprocess = (INPUTS[inputs](),) * 3
        self.preprocess_s = self.preprocess + ((Tanh(),) if self.loss_input else ())
        self.rnn_s = LSTMBank.uniform(self.kinds, sum(pp.n_features for pp in self.preprocess_s),
                                      self.hidden)
        self.rnn_p = (LSTMBank.uniform(self.kinds, sum(pp.n_features for pp in self.preprocess),
                                       self.hidden) if use_rnn_p else None)
        self.size_s = self.rnn_s.size
        self.size = self.size_s + (self.rnn_p.size if use_rnn_p else 0)

    def config(self):
        return {"hidden": list(self.hidden), "kinds": list(self.kinds),
                "use_rnn_p": self.use_rnn_p, "n": self.n, "s_min": self.s_min,
                "p_min": self.p_min, "b_mt": self.b_mt, "inputs": self.inputs,
                "loss_input": self.loss_input}

    def split(self, theta):
        """``(theta_s, theta_p)`` views of the flat meta-parameters."""
        return theta[:self.size_s], (theta[self.size_s:] if self.use_rnn_p else None)

    def init(self, seed=0, xp=np, dtype=np.float64):
        rng = np.random.default_rng(seed)
        parts = [self.rnn_s.init(rng)]
        if self.use_rnn_p:
            parts.append(self.rnn_p.init(rng))
        return xp.asarray(np.concatenate(parts), dtype=dtype)

    def damping_bias(self, theta, s, zero_weights=False):
        """A copy of ``theta`` whose RNN_s output bias is softplus⁻¹(s − s_min) =
        log(expm1(s − s_min)), for ``s`` a number or ``{kind: s_k}`` for some kinds.
        With its output weights kept, RNN_s starts near s and still responds to its
        inputs (meta-training's ``init_damping``); ``zero_weights`` makes s
        constant whatever the inputs (:meth:`constant_damping`).  RNN_p is kept."""
        theta = theta.copy()
        theta_s = self.split(theta)[0]
        per_kind = s if isinstance(s, dict) else dict.fromkeys(self.kinds, s)
        for kind, s_k in per_kind.items():
            if not s_k > self.s_min:
                raise UserError(f"damping {s_k!r} for {kind}: it must exceed "
                                f"s_min = {self.s_min:g}")
            views = self.rnn_s.lstms[kind].views(theta_s[self.rnn_s.theta_slices[kind]])
            if zero_weights:
                views["out.weight"][...] = 0
            views["out.bias"][...] = math.log(math.expm1(s_k - self.s_min))
        return theta

    def constant_damping(self, theta, s):
        """A copy of ``theta`` whose RNN_s gives the constant damping ``s`` (a number,
        or ``{kind: s_k}`` for some kinds) whatever its inputs: output weights 0,
        output bias softplus⁻¹(s − s_min).  RNN_p is kept."""
        return self.damping_bias(theta, s, zero_weights=True)

    def rows(self, layout):
        """``{kind: slice}`` of the kinds present in ``layout``; error on unknown kinds."""
        missing = [k for k in layout.kinds if k not in self.kinds]
        if missing:
            raise UserError(f"MLHF meta-parameters cover kinds {', '.join(self.kinds)}; "
                            f"the model also has {', '.join(missing)}")
        return {k: layout.kind_slice(k) for k in layout.kinds}

    def zero_states(self, rows, xp, dtype):
        states = {"s": self.rnn_s.zero_state(rows, xp, dtype)}
        if self.use_rnn_p:
            states["p"] = self.rnn_p.zero_state(rows, xp, dtype)
        return states

    def save(self, path, theta, extra_config=None, extra=None):
        banks = {"rnn_s": (self.rnn_s, self.split(theta)[0])}
        if self.use_rnn_p:
            banks["rnn_p"] = (self.rnn_p, self.split(theta)[1])
        save_meta(path, "mlhf", {**self.config(), **(extra_config or {})}, banks, extra)

    @classmethod
    def load(cls, path, xp=np, dtype=None):
        """``(nets, theta, config, extra)`` from a file written by :meth:`save`."""
        config, banks, extra = load_meta(path, "mlhf", xp, dtype)
        nets = cls(hidden=config["hidden"], kinds=config["kinds"], use_rnn_p=config["use_rnn_p"],
                   n=config["n"], s_min=config["s_min"], p_min=config["p_min"],
                   b_mt=config["b_mt"], inputs=config.get("inputs", "tanh"),
                   loss_input=config.get("loss_input", False))
        parts = [banks["rnn_s"][1]] + ([banks["rnn_p"][1]] if nets.use_rnn_p else [])
        theta = xp.concatenate(parts) if len(parts) > 1 else parts[0]
        if theta.shape != (nets.size,):
            raise UserError(f"{path}: meta-parameters do not match their configuration")
        return nets, theta, config, extra


@dataclass
class Direction:
    """One MLHF step's quantities (what meta-training differentiates through)."""
    s: object              # damping (N,)
    P: object              # preconditioner (N,) or None
    out_s: object          # raw RNN_s output (N, 1), for softplus'
    out_p: object          # raw RNN_p output (N, 1) or None
    pcg: object            # PCGResult: x = d_n, r = r_n
    apply_A: object        # v -> G v + s ⊙ v at (w^t, x^t)
    cache_s: object        # LSTM caches (meta-training only)
    cache_p: object
    inputs_s: object       # RNN inputs (stop-gradient constants)
    inputs_p: object


def mlhf_direction(nets, theta, states, problem, lin, g, d_prev, r_prev, rows, record=False,
                   inputs=None, loss_ratio=0.0):
    """Steps 2-5 of Algorithm 1 at the linearization ``lin`` with gradient ``g``.

    ``g``, ``d_prev``, ``r_prev`` and the returned s, P, d_n, r_n are flat (N,)
    vectors; the RNNs see them as the N rows of an (N, k) input (k = 3 with
    tanh, 6 with logsign, +1 for RNN_s's loss input; ``rows``: each kind's row
    slice).  ``states`` (LSTM states, updated in place: ``states["s"]``,
    ``states["p"]``), ``d_prev``/``r_prev`` the previous solution and residual (``None`` at the
    start).  ``loss_ratio`` is log(l_t / l_{t−1}), RNN_s's fourth input when
    ``nets.loss_input`` (:func:`log_loss_ratio`).  ``inputs`` replaces the RNN
    inputs by given constants (the
    finite-difference replay of meta-training).  ``record`` (meta-training)
    keeps the PCG iterates and the LSTM caches; without it (inference) both
    are skipped and ``cache_s``/``cache_p`` are None.  Returns a :class:`Direction`.
    """
    xp = backend.get_array_module(g)
    theta_s, theta_p = nets.split(theta)
    zeros = None if d_prev is not None and r_prev is not None else xp.zeros_like(g)
    d0 = zeros if d_prev is None else d_prev
    rp = zeros if r_prev is None else r_prev
    if inputs is None:
        extra = (xp.full_like(g, loss_ratio),) if nets.loss_input else ()
        x_s = build_inputs(nets.preprocess_s, (g, d0, rp) + extra)
    else:
        x_s = inputs[0]
    out_s, states["s"], cache_s = nets.rnn_s.step(theta_s, states["s"], x_s, rows,
                                                  keep_cache=record)
    s = SOFTPLUS.forward(out_s[:, 0])
    s += nets.s_min

    def apply_A(v):
        return problem.gvp(lin, v, s)

    x0 = d_prev                                   # None at the start: r0 = g, no product
    r0 = g if x0 is None else g - apply_A(x0)
    P = out_p = cache_p = x_p = None
    if nets.use_rnn_p:
        x_p = build_inputs(nets.preprocess, (g, d0, r0)) if inputs is None else inputs[1]
        out_p, states["p"], cache_p = nets.rnn_p.step(theta_p, states["p"], x_p, rows,
                                                      keep_cache=record)
        P = SOFTPLUS.forward(out_p[:, 0])
        P += nets.p_min
    result = pcg(apply_A, g, x0, P, nets.n, eps=0.0, r0=r0, record=record)
    return Direction(s, P, out_s, out_p, result, apply_A, cache_s, cache_p, x_s, x_p)


def damping_means(s, layout):
    """``{"damping_mean": mean of s, "damping_mean.<kind>": mean over that kind's
    coordinates}``, in one host copy.

    The overall mean is weighted by coordinate counts, so on a CNN it is
    nearly the fully-connected weights' damping; RNN_s has one set of
    meta-parameters per kind and learns a different damping for each (on
    cnn-small the horizon-log objective lowers conv.weight's to ~0.25 while
    fc.weight's stays ~0.6: ``hfmeta/meta/shipped/README.md``).
    """
    xp = backend.get_array_module(s)
    keys = ["damping_mean"] + [f"damping_mean.{k}" for k in layout.kinds]
    means = xp.stack([s.mean()] + [s[layout.kind_slice(k)].mean() for k in layout.kinds])
    return dict(zip(keys, backend.asnumpy(means).tolist()))


def log_loss_ratio(f, f_prev):
    """log(f / f_prev), RNN_s's loss input (0 when there is no previous loss)."""
    return 0.0 if f_prev is None else math.log(float(f) / float(f_prev))


def restart_due(f, f_prev, restart):
    """Whether to restart PCG cold at this step: the mini-batch loss ``f`` is more
    than ``restart`` times the previous step's ``f_prev`` (False when ``restart``
    is None or there is no previous step).

    Ours, not the paper's: adaptive restart of momentum methods (O'Donoghue &
    Candès 2015, the function scheme) applied to the warm start x0 = d_prev.
    The warm start is MLHF's momentum: in directions of small curvature four
    CG iterations barely shrink d_prev's error, so each step repeats much of
    the last one, the more so the smaller the damping.  A restarted step drops
    d_prev and r_prev (PCG from x0 = 0, the RNN inputs as at t = 0); the LSTM
    states run on.  The losses are of different mini-batches, so at small
    losses batch noise alone triggers restarts now and then.
    """
    return bool(restart) and f_prev is not None and float(f) > restart * float(f_prev)


def warm_start(f, f_prev, d_prev, r_prev, restart):
    """``(d_prev, r_prev, loss_ratio)`` for a step at mini-batch loss ``f`` after one at
    ``f_prev`` (None at the first step): the previous solution and residual, or
    ``(None, None)`` when :func:`restart_due`, and RNN_s's loss input
    :func:`log_loss_ratio` -- shared by the optimizer and both meta-training unrolls."""
    if restart_due(f, f_prev, restart):
        d_prev = r_prev = None
    return d_prev, r_prev, log_loss_ratio(f, f_prev)


def check_restart(restart, who):
    """``restart`` itself when it is None or a loss ratio above 1; else a one-line error."""
    if restart is not None and (isinstance(restart, bool)
                                or not isinstance(restart, (int, float)) or not restart > 1):
        raise UserError(f"{who}: restart={restart!r}: give a loss ratio above 1 (e.g. 2: "
                        f"restart PCG cold when the loss more than doubles) or leave it out")
    return restart


def clip_step(d, w, lr, clip):
    """Scale of the clipped step ``lr·d``: ``min(1, clip·‖w‖ / (lr‖d‖))`` (1 when ``clip``
    is 0 or None).  The released code clips during meta-training with clip = 0.25."""
    if not clip:
        return 1.0
    xp = backend.get_array_module(d)
    norm_d = float(xp.linalg.norm(d))
    limit = clip * float(xp.linalg.norm(w)) / lr
    return 1.0 if norm_d <= limit or norm_d == 0 else limit / norm_d


class MLHF(Optimizer):
    """The MLHF optimizer (inference): meta-trained RNN_s, RNN_p and 4-step PCG.

    Hyper-parameters: ``lr`` ("auto" = b_tr / b_mt, the paper's rule), ``n``
    (PCG iterations; default: the meta-trained value), ``curvature_batch``
    (the Gauss-Newton products use only the first that many examples of the
    batch, Martens' practice; None, or a size not below the batch's, = the
    whole batch).  State: the LSTM states
    of both RNNs per kind and the previous PCG solution ``d_prev`` and residual
    ``r_prev`` -- all checkpointable.

    ``clip`` (default None, the paper: no safeguard at inference) limits each
    step as meta-training does, ``‖lr·d‖ ≤ clip·‖w‖`` (the released code's
    0.25 during meta-training): an overshooting step -- small damping, or
    meta-nets from another model -- is shortened to that length.  Not a
    guarantee: a run can still blow up through steps within the limit.  The
    next step warm-starts from the unclipped d, as in meta-training.

    ``restart`` (default: the value the meta-parameters were trained with,
    else None = the paper's unconditional warm start) is a loss ratio > 1:
    a step whose mini-batch loss is more than ``restart`` times the previous
    step's starts PCG cold (:func:`restart_due`; logged as ``restarted``).
    Meant to stop the runaway of a small learned damping, where the warm
    start repeats an overshooting step until the loss explodes; measured, it
    does not make the horizon-log MLHF safe (``docs/mlhf_restart.md``).
    """

    name = "mlhf"
    defaults = {"lr": "auto", "n": None, "curvature_batch": None, "clip": None,
                "restart": None}
    load_options = ("untrained", "seed", "inputs")      # taken by from_meta
    ranges = {"lr": Range(0, low_open=True, also=("auto",)), "n": optional(COUNT),
              "curvature_batch": optional(COUNT), "clip": optional(POSITIVE)}

    def __init__(self, nets: MLHFNets, theta, model=None, **hparams):
        super().__init__(**hparams)
        self.nets, self.theta = nets, theta
        check_restart(self.hparams["restart"], "mlhf")
        if self.hparams["n"] is not None:
            nets.n = int(self.hparams["n"])
        self.rows = nets.rows(model.layout) if model is not None else None

    @classmethod
    def from_meta(cls, path, model, untrained=False, seed=0, inputs=None, **hparams):
        """Load meta-parameters (``None``: the shipped ones; ``untrained``: fresh
        meta-nets with input preprocessing ``inputs``, and lr = 1 unless given: they
        were never meta-trained, so there is no b_mt for lr = b_tr / b_mt).

        Transfer: meta-parameters are per parameter kind, so they apply to any
        model whose kinds were all seen in meta-training (``resnet-mini`` →
        ``resnet18v2``); a kind never meta-trained is a clear error.
        """
        check_options("mlhf", {"untrained": untrained, "seed": seed, "inputs": inputs},
                      {"untrained": FLAG, "seed": NATURAL,
                       "inputs": Choice((None,) + tuple(INPUTS))})
        if seed and not untrained:
            raise UserError("mlhf: seed picks the initialisation of untrained meta-nets; "
                            "give it with untrained=true")
        xp = model.xp if model is not None else np
        dtype = model.dtype if model is not None else np.float64
        if untrained and path is not None:
            raise UserError("mlhf: give a meta-parameter file or untrained=true, not both")
        if untrained:
            nets = MLHFNets(inputs=inputs or "tanh")
            hparams.setdefault("lr", 1.0)
            return cls(nets, nets.init(seed, xp, dtype), model, **hparams)
        if path is None:
            path = shipped_path("mlhf")
            if not os.path.exists(path):
                raise UserError("no shipped MLHF meta-parameters; run `hfmeta meta-train "
                                "--method mlhf` or pass --meta")
        nets, theta, config, _ = MLHFNets.load(path, xp, dtype)
        if inputs is not None and inputs != nets.inputs:
            raise UserError(f"{path} was meta-trained with inputs={nets.inputs}, not {inputs}")
        trained = config.get("trained_kinds")
        if model is not None and trained is not None:
            untrained_kinds = [k for k in model.layout.kinds if k not in trained]
            if untrained_kinds:
                raise UserError(
                    f"{path} was meta-trained on {config.get('model', '?')}, whose parameters "
                    f"have no {', '.join(untrained_kinds)}; {model.name} needs them: give "
                    f"--meta FILE meta-trained on such a model (`hfmeta meta-train -m mlhf "
                    f"--model {model.name}`), or --hp untrained=true")
        if config.get("restart") is not None:
            hparams.setdefault("restart", config["restart"])
        return cls(nets, theta, model, **hparams)

    def lr_for(self, batch_size):
        lr = self.hparams["lr"]
        return batch_size / self.nets.b_mt if lr == "auto" else float(lr)

    def init(self, w):
        return {"t": 0, "d_prev": None, "r_prev": None, "lstm": None, "f_prev": None}

    def step(self, problem, w, state, batch):
        if self.rows is None:
            self.rows = self.nets.rows(problem.model.layout)
        xp = backend.get_array_module(w)
        f, g, lin = self.gradient(problem, w, batch)
        lin = curvature_linearization(problem, w, batch, lin, self.curvature_batch)
        lstm = state["lstm"] or self.nets.zero_states(self.rows, xp, w.dtype)
        d_prev, r_prev, ratio = warm_start(f, state.get("f_prev"), state["d_prev"],
                                           state["r_prev"], self.restart)
        restarted = d_prev is None and state["d_prev"] is not None
        dirn = mlhf_direction(self.nets, self.theta, lstm, problem, lin, g, d_prev, r_prev,
                              self.rows, loss_ratio=ratio)
        d, r = dirn.pcg.x, dirn.pcg.r
        lr = self.lr_for(batch[0].shape[0])
        new_state = {"t": state["t"] + 1, "d_prev": d, "r_prev": r, "lstm": lstm,
                     "f_prev": float(f)}
        scale = clip_step(d, w, lr, self.clip)
        info = {"loss": float(f), "step_norm": scale * lr * self.norm(d), "lr": lr,
                "residual": self.norm(r), **damping_means(dirn.s, problem.model.layout)}
        if self.clip:
            info["clip_scale"] = scale
        if self.restart:
            info["restarted"] = int(restarted)
        return w - (scale * lr) * d, new_state, info

    # -- checkpointing: flatten the nested LSTM states ---------------------------------
    def state_to_dict(self, state):
        out = {"t": state["t"]}
        if state.get("f_prev") is not None:
            out["f_prev"] = state["f_prev"]
        for key in ("d_prev", "r_prev"):
            if state[key] is not None:
                out[key] = backend.asnumpy(state[key]).copy()
        for rnn, groups in (state["lstm"] or {}).items():
            for kind, layers in groups.items():
                for l, (h, c) in enumerate(layers):
                    out[f"lstm.{rnn}.{kind}.{l}.h"] = backend.asnumpy(h).copy()
                    out[f"lstm.{rnn}.{kind}.{l}.c"] = backend.asnumpy(c).copy()
        return out

    def state_from_dict(self, d, xp=np):
        state = {"t": int(d.get("t", 0)), "d_prev": None, "r_prev": None, "lstm": None,
                 "f_prev": float(d["f_prev"]) if "f_prev" in d else None}
        for key in ("d_prev", "r_prev"):
            if key in d:
                state[key] = xp.asarray(d[key])
        lstm = {}
        for key, value in d.items():
            if key.startswith("lstm."):            # lstm.<rnn>.<kind>.<layer>.<h|c>
                rnn, rest = key[len("lstm."):].split(".", 1)
                kind, layer, hc = rest.rsplit(".", 2)
                lstm.setdefault(rnn, {}).setdefault(kind, {})[int(layer), hc] = xp.asarray(value)
        if lstm:
            state["lstm"] = {rnn: {kind: [(hs[l, "h"], hs[l, "c"]) for l in range(len(hs) // 2)]
                                   for kind, hs in groups.items()}
                             for rnn, groups in lstm.items()}
        return state
