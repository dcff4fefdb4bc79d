"""Meta-training MLHF (Chen, Lu & Fokoue 2019, section 3.1), every meta-gradient by hand.

One meta-iteration is an unroll of T steps (T = 10) of Algorithm 1 on the
meta-training split, with lr = 1 and, as in the released code, the step
clipped to norm 0.25‖w‖ and multiplied by noise U(0.98, 1.02).  Two losses::

    l_p   = (1/T) Σ_t −⟨d^t, g^t⟩ / sqrt(⟨d^t, A^t d^t⟩),   A^t d^t = g^t − r^t   (trains RNN_p)
    l_s^t = l(x^{t+1}, w^{t+1}) + l(x^t, w^{t+1}) − 2 l(x^t, w^t)
    l_s   = Σ_t softmax(l_s)_t · l_s^t                                          (10·l_s trains RNN_s)

Two choices the paper leaves open, each an option of :class:`MetaTrainer`:

* ``noise_draw``: the released code draws the noise per coordinate
  (``tf.random_uniform(x.shape, 0.98, 1.02)``), which also turns the
  direction a little; ``"step"`` (the default) draws one factor per step,
  which only rescales it.  The default is "step" because the shipped
  ``mlhf_paper.h5`` and every documented meta-training were made with it;
  ``"coordinate"`` is the released code's.
* ``ls_form``: ``"paper"`` (the default) takes l_s^t as above, the paper's
  equation (4); ``"half"`` takes half of it, as the released code does
  (``(l(x^{t+1}, w^{t+1}) + l(x^t, w^{t+1}))/2 − l(x^t, w^t)``).  Half l_s^t
  halves RNN_s's gradient and makes its weights softmax(l_s/2), flatter:
  the unroll's worst steps weigh less.  The paper's form is the default
  because the paper is the reference this project implements; the factor is
  one constant, so the meta-gradient needs nothing else.

Stop-gradients (paper section 3.1): nothing flows through w^t, g^t, d_0^t,
r_0^t (so the RNN inputs are constants), through l(x^t, w^t) or through the
softmax weights; the LSTM states are *not* stopped (BPTT across the unroll).
With them, l_s^t depends on the meta-parameters only through d^t:

    ∂l_s^t/∂d^t = J_clipᵀ (−lr · u^t ⊙ (∇l(x^{t+1}, w^{t+1}) + ∇l(x^t, w^{t+1})))

(w^{t+1} = w^t − lr · u^t · c(d^t) · d^t with u^t the step noise and c the
clip scale of :func:`hfmeta.meta.mlhf.clip_step`; J_clip is the Jacobian of
d ↦ c(d)·d, :func:`clip_step_vjp`; l_s^t is weighted by 10 · softmax(l_s)_t)

and the first gradient is the next step's g^{t+1} anyway.  So the PCG
backward of step t (self-gradient trick, :func:`hfmeta.pcg.pcg_backward`)
runs as soon as step t+1's gradient exists, with step t's linearization still
alive; its results, the output cotangents of RNN_s and RNN_p, are stored, and
only the LSTM caches live for the whole unroll.  At the end the softmax
weights scale the stored RNN_s cotangents and BPTT runs through both banks.
Memory: two linearizations and two PCG tapes, plus T steps of LSTM caches
(25 numbers per coordinate, step and net) and output cotangents (1).  The
linearizations keep lean caches (:func:`hfmeta.layers.base.lean_caches`: a
convolution keeps its input, not its im2col columns); with ``record=False``
nothing else is kept per step; the BPTT frees each step's cache as it goes.
resnet-mini, batch 64, T = 10 (``hfmeta bench --model resnet-mini --items unroll``):
peak 0.83 GiB, of which ~0.5 GiB LSTM caches and 2 × 93 MiB linearizations.

Per unroll: 2T + 1 forward+backward passes (g^0, then per step ∇l(x^t, w^{t+1})
and g^{t+1}, which is the next step's g^t), and per step n + 1 + 2n products
with A (PCG and its two backward passes, one for P with l_p, one for s with
l_s; n + 2n on a step without a warm start).
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import backend
from ..checks import (COUNT, FLAG, NATURAL, NONNEGATIVE, POSITIVE, SIZES, Choice, Range,
                      check_options, check_representable, optional)
from ..errors import UserError
from ..layers.base import lean_caches
from .common import MetaAdam, ReplayBuffer, draws_state, restore_draws
from .mlhf import SOFTPLUS, MLHFNets, check_restart, clip_step, mlhf_direction, warm_start
from .mlhf_es import ES_PARAMS
from ..pcg import pcg_backward

STEP_CLIP = 0.25        # released code: ‖lr·d‖ ≤ 0.25 ‖w‖ during meta-training
STEP_NOISE = 0.02       # released code: step × U(0.98, 1.02) during meta-training
LS_SCALE = {"paper": 1.0, "half": 0.5}      # ls_form: l_s^t as in the paper, or half of it
LS_WEIGHT = 10.0        # 10 · l_s trains RNN_s (METHODS.md)
CURVATURE_TINY = 1e-12  # floor of ⟨d, A d⟩ in l_p


@dataclass
class Frozen:
    """The stop-gradient constants of one unroll (for the finite-difference replay)."""
    w: list = field(default_factory=list)          # w^t
    d_prev: list = field(default_factory=list)     # d_0^t
    r_prev: list = field(default_factory=list)     # r_0^t
    inputs: list = field(default_factory=list)     # (RNN_s inputs, RNN_p inputs)
    noise: list = field(default_factory=list)      # the step's U(0.98, 1.02) factor(s)
    ls_weights: object = None                      # softmax(l_s), stop-gradient


@dataclass
class UnrollResult:
    l_s: float              # ls_weight · l_s (10 · l_s by default), as it trains RNN_s
    l_p: float
    grad: object            # meta-gradient [θ̄_s, θ̄_p] (None when not asked)
    w: object               # w^T, to continue from
    d_prev: object
    r_prev: object
    frozen: Frozen
    stats: dict


def step_factor(noise, t):
    """The noise factor u^t of step t: 1.0 without noise (``noise`` None), a Python
    float for one factor per step (a NumPy float64 would promote float32 weights to
    float64), or the step's vector of per-coordinate factors as it is."""
    if noise is None:
        return 1.0
    u = noise[t]
    return u if getattr(u, "ndim", 0) else float(u)


def clip_step_vjp(d, scale, y):
    """``J_clipᵀ y`` for ``d ↦ scale(d)·d`` with ``scale = c/‖d‖`` when clipped:
    ``(c/‖d‖)(y − d̂⟨d̂, y⟩)``; the identity when not clipped."""
    if scale == 1.0:
        return y
    xp = backend.get_array_module(d)
    d_hat = d / xp.linalg.norm(d)
    return scale * (y - d_hat * xp.dot(d_hat, y))


def l_p_term(d, g, r):
    """One step's RNN_p loss and its cotangents: ``(l, ∂l/∂d, ∂l/∂r)`` with

        l = −a / sqrt(q),   a = ⟨d, g⟩,   q = ⟨d, A d⟩ = ⟨d, g − r⟩

    (A d from the PCG residual, as the released code), so
    ``∂l/∂d = −g/√q + (a / 2q^{3/2}) (g − r)`` and ``∂l/∂r = −(a / 2q^{3/2}) d``.
    Where q < CURVATURE_TINY it is floored there, a constant, and the gradient
    is that of the floored loss: ``∂l/∂d = −g/√q``, ``∂l/∂r = 0`` (like PCG's
    guards, the gradient follows the active branch).  l_p is the mean of l
    over the unroll."""
    xp = backend.get_array_module(d)
    Ad = g - r
    a, q = float(xp.dot(d, g)), float(xp.dot(d, Ad))
    if q < CURVATURE_TINY:
        q, c = CURVATURE_TINY, 0.0
    else:
        c = 0.5 * a / q ** 1.5
    return -a / math.sqrt(q), -g / math.sqrt(q) + c * Ad, -c * d


def lean_loss_and_grad(problem, w, batch):
    """``problem.loss_and_grad`` with lean caches: the convolutions keep their input,
    not its im2col columns (resnet-mini: a linearization 470 -> ~100 MB at batch 64),
    and unfold it again in every product; the numbers are the same."""
    with lean_caches():
        return problem.loss_and_grad(w, batch)


def held_out_start(model, batches, T, k, seed=12345, warm=0):
    """Held-out window ``k`` of :meth:`MetaTrainer.evaluate`: a fresh target net
    (seed ``seed + k``) and ``warm + T + 1`` fixed batches of ``batches``, far past any
    meta-training step (steps 10⁶ + k(T + 1) + t without a warm-up, 10⁶ + 10⁵·warm +
    k(warm + T + 1) + t with one).  Returns ``(w, [batch_0, …])``."""
    base = 10 ** 6 + k * (T + 1) if not warm else 10 ** 6 + 10 ** 5 * warm + k * (warm + T + 1)
    return model.init(seed + k), [batches.batch_at(base + t) for t in range(warm + T + 1)]


def unroll(nets, theta, problem, w, states, d_prev, r_prev, batches, rows, lr=1.0,
           clip=STEP_CLIP, noise=None, ls_weight=LS_WEIGHT, frozen=None, backward=True,
           train="sp", record=True, restart=None, ls_scale=1.0):
    """Run T = ``len(batches) − 1`` MLHF steps and (optionally) their meta-gradient.

    ``train`` names the meta-nets that get a gradient ("s", "p" or "sp"); the
    other part of the returned gradient is zero and its PCG backward passes
    are skipped.

    ``states`` (LSTM states) are updated in place.  ``noise`` is a list of T
    step factors, numbers or flat vectors of one factor per coordinate (None:
    no noise); ``ls_scale`` multiplies every l_s^t (1: the paper, 0.5: the
    released code).  With ``frozen`` (a :class:`Frozen` of an
    earlier call) the stop-gradient quantities are taken from it instead of
    the run: this is the function whose finite differences the meta-gradient
    must match.  ``record=False`` keeps only the noise and the softmax weights
    in the result's :class:`Frozen` (no w^t, d_0^t, r_0^t, RNN inputs: T·(3 + 6)
    flat vectors that meta-training never reads).  ``restart`` (a loss ratio,
    or None) restarts PCG cold within the unroll as the optimizer does
    (:func:`hfmeta.meta.mlhf.restart_due`); d_0^t is a stop-gradient constant
    either way.  Returns an :class:`UnrollResult`.
    """
    xp = backend.get_array_module(theta)
    T = len(batches) - 1
    theta_s, theta_p = nets.split(theta)
    rec = Frozen() if frozen is None else frozen
    caches_s, caches_p = [], []
    dout_s, dout_p = [None] * T, [None] * T
    ls_vals, lp_vals, res_norms, losses = [], [], [], []
    need_s = backward and "s" in train
    need_p = backward and "p" in train and nets.use_rnn_p
    f_t = g_t = lin_t = f_prev = None

    for t in range(T):
        if frozen is not None:
            w, d_prev, r_prev = frozen.w[t], frozen.d_prev[t], frozen.r_prev[t]
            f_t, g_t, lin_t = lean_loss_and_grad(problem, w, batches[t])
        else:
            if f_t is None:
                f_t, g_t, lin_t = lean_loss_and_grad(problem, w, batches[t])
            d_prev, r_prev, ratio = warm_start(f_t, f_prev, d_prev, r_prev, restart)
            f_prev = f_t
        dirn = mlhf_direction(nets, theta, states, problem, lin_t, g_t, d_prev, r_prev, rows,
                              record=True, inputs=None if frozen is None else frozen.inputs[t],
                              loss_ratio=0.0 if frozen is not None else ratio)
        d, r = dirn.pcg.x, dirn.pcg.r
        if frozen is None:
            if record:
                rec.w.append(w)
                rec.d_prev.append(d_prev)
                rec.r_prev.append(r_prev)
                rec.inputs.append((dirn.inputs_s, dirn.inputs_p))
            # a Python float: a NumPy float64 factor would promote float32 weights to float64
            rec.noise.append(step_factor(noise, t))
        caches_s.append(dirn.cache_s)
        caches_p.append(dirn.cache_p)
        res_norms.append(float(xp.linalg.norm(r)))
        losses.append(float(f_t))

        l_p_t, d_bar, r_bar = l_p_term(d, g_t, r)
        lp_vals.append(l_p_t)
        if need_p:
            P_bar = pcg_backward(dirn.pcg, dirn.apply_A, d_bar / T, r_bar / T, need=("P",))["P"]
            dout_p[t] = SOFTPLUS.backward(dirn.out_p[:, 0], P_bar)[:, None]

        # the step, clipped and with noise as in the released code
        u = rec.noise[t]
        scale = clip_step(d, w, lr, clip)
        w_next = w - (lr * u * scale) * d

        # l_s^t = l(x^{t+1}, w^{t+1}) + l(x^t, w^{t+1}) − 2 l(x^t, w^t)
        # (the linearization of l(x^t, w^{t+1}) is dropped at once: binding it to a
        # name would keep a third one alive through the rest of the step)
        f_same, g_same = lean_loss_and_grad(problem, w_next, batches[t])[:2]
        f_next, g_next, lin_next = lean_loss_and_grad(problem, w_next, batches[t + 1])
        ls_vals.append(ls_scale * (float(f_next) + float(f_same) - 2 * float(f_t)))
        if need_s:
            y = (-lr * u * ls_scale) * (g_next + g_same)
            s_bar = pcg_backward(dirn.pcg, dirn.apply_A, clip_step_vjp(d, scale, y), None,
                                 need=("s",))["s"]
            dout_s[t] = SOFTPLUS.backward(dirn.out_s[:, 0], s_bar)[:, None]
        del dirn, lin_t                                  # step t's linearization is done
        w, d_prev, r_prev = w_next, d, r
        f_t, g_t, lin_t = f_next, g_next, lin_next

    if frozen is None:
        v = np.array(ls_vals)
        e = np.exp(v - v.max())
        rec.ls_weights = e / e.sum()
    weights = rec.ls_weights
    l_s = ls_weight * float(np.dot(weights, ls_vals))
    l_p = float(np.mean(lp_vals))
    grad = None
    del lin_t                           # w^T's linearization: not needed for the BPTT
    if backward:
        grad = xp.zeros_like(theta)
        grad_s, grad_p = nets.split(grad)
        if need_s:
            for t in range(T):
                dout_s[t] *= ls_weight * weights[t]
            grad_s[...] = nets.rnn_s.backward(theta_s, caches_s, dout_s, rows, consume=True)[0]
        del caches_s[:], dout_s[:]      # RNN_s's caches go before RNN_p's BPTT
        if need_p:
            grad_p[...] = nets.rnn_p.backward(theta_p, caches_p, dout_p, rows, consume=True)[0]
    stats = {"l_s": l_s, "l_p": l_p, "residual": float(np.mean(res_norms)),
             "loss": float(np.mean(losses)), "loss_end": float(f_t)}
    return UnrollResult(l_s, l_p, grad, w, d_prev, r_prev, rec, stats)


#: the allowed values of MetaTrainer's numeric options (clip 0: no clipping)
TRAINER_RANGES = {"T": COUNT, "n": COUNT, "hidden": SIZES, "meta_lr": NONNEGATIVE,
                  "l2": NONNEGATIVE,
                  "max_grad_norm": Range(0, or_none=True, also=("theta",)),
                  "reset_prob": Range(0, 1), "buffer": NATURAL, "store_every": COUNT,
                  "clip": optional(NONNEGATIVE),
                  "es_pairs": COUNT, "es_sigma": POSITIVE, "es_steps": COUNT,
                  "es_cap": POSITIVE, "workers": COUNT, "seed": NATURAL,
                  "noise": Range(0, 1, high_open=True), "use_rnn_p": FLAG, "loss_input": FLAG,
                  "train": Choice(("sp", "s", "p")),
                  "objective": Choice(("paper", "horizon", "horizon-log", "es")),
                  "inputs": Choice(("tanh", "logsign")), "es_params": Choice(ES_PARAMS),
                  "noise_draw": Choice(("step", "coordinate")), "ls_form": Choice(tuple(LS_SCALE))}
#: the objectives an option applies to (the others refuse it away from its default)
UNROLLED = ("paper", "horizon", "horizon-log")
APPLIES_TO = {**dict.fromkeys(("T", "clip", "noise", "noise_draw", "reset_prob", "buffer",
                               "store_every"), UNROLLED),
              **dict.fromkeys(("es_pairs", "es_sigma", "es_steps", "es_params", "es_cap",
                               "workers"), ("es",)),
              "ls_form": ("paper",)}


class MetaTrainer:
    """Meta-train RNN_s and RNN_p on a stream of meta-training batches.

    Parameters (defaults from METHODS.md for the convnet): ``T`` unroll length
    (10), ``n`` PCG iterations (4), ``hidden`` LSTM units ((4, 4)),
    ``use_rnn_p`` (False = the ablation with P = I), ``meta_lr`` Adam rate
    (1e-3; 1e-2 for ResNets), ``l2`` (2e-7), ``max_grad_norm`` (global-norm
    clip of the meta-gradient, L2 term included: 1.0, ours; or "theta", the
    released code's: clipped at the norm of all meta-parameters, ‖θ‖, about 18
    at initialisation; None or 0: no clip; the released code also divides the
    meta learning rate by 10 at epochs 150, 190 and 220 of its 250, a schedule
    for runs far longer than ours, not offered), ``reset_prob`` (0.7; 0.5 for ResNets),
    ``buffer`` replay capacity (200), ``store_every`` (store the current
    weights every this many meta-iterations; fresh nets are not stored
    separately, as METHODS.md suggests, but keep coming from the buffer's
    1/(len + 1) fresh draws, :class:`~hfmeta.meta.common.ReplayBuffer`), ``clip``/``noise`` (the
    released code's step clip and noise), ``noise_draw`` ("step": one noise
    factor per step, or "coordinate", the released code's one per coordinate;
    see above), ``ls_form`` ("paper" or "half", the released code's l_s^t / 2;
    see above), ``train`` (which meta-nets learn:
    "sp" both, the paper; "s" or "p" keeps the other at its initialisation,
    or at the values of ``resume_from``), ``inputs`` (the RNN input
    preprocessing, "tanh" as in the paper or "logsign", see
    :mod:`hfmeta.meta.mlhf`), ``objective`` ("paper": l_p and l_s as above;
    "horizon": the mean training loss along the unroll with the target net's
    derivatives as constants, :mod:`hfmeta.meta.mlhf_horizon` -- ours, against
    l_s's short-horizon bias; use it with a longer ``T``; "horizon-log": the
    mean log-loss), ``restart`` (None, the paper; or a loss ratio: the
    unrolls restart PCG cold as :class:`hfmeta.meta.mlhf.MLHF` does with it,
    from each unroll's second step on, and the file records it so the
    optimizer uses it by default), ``loss_input`` (RNN_s also sees the loss
    log-ratio, :class:`hfmeta.meta.mlhf.MLHFNets`; ours; 0 at the first step
    of each unroll), ``init_damping`` (None: RNN_s's output bias starts at 0, so
    s starts near softplus(0) ≈ 0.69; a number s_0: the output bias starts at
    softplus⁻¹(s_0 − s_min) on every kind, the rest of the initialisation
    unchanged -- where s starts decides which way l_s moves it, see
    docs/mlhf_init_damping.md), ``seed``.

    ``objective="es"`` (ours, :mod:`hfmeta.meta.mlhf_es`) replaces the
    unrolls by whole runs of ``es_steps`` MLHF steps as ``hfmeta train``
    takes them, scored by their mean log-loss, with an evolution-strategies
    gradient of ``es_pairs`` antithetic pairs at perturbation ``es_sigma``
    (``es_cap`` caps a run's loss; a blow-up counts log(cap) per remaining
    step) on the output layers of the trained nets (``es_params="out"``) or
    on all of them (``"all"``), of the kinds the target net has; ``workers``
    runs them in forked processes.
    T, clip, noise, noise_draw, ls_form, reset_prob and the replay buffer do not
    apply to it; ls_form applies to the paper's objective only.
    """

    def __init__(self, problem, batches, T=10, n=4, hidden=(4, 4), use_rnn_p=True,
                 meta_lr=1e-3, l2=2e-7, max_grad_norm=1.0, reset_prob=0.7, buffer=200,
                 store_every=5, clip=STEP_CLIP, noise=STEP_NOISE, noise_draw="step",
                 ls_form="paper", train="sp", inputs="tanh",
                 objective="paper", restart=None, loss_input=False, es_pairs=8, es_sigma=0.1,
                 es_steps=120, es_params="out", es_cap=10.0, workers=1, init_damping=None,
                 seed=0):
        options = {k: v for k, v in locals().items() if k not in ("self", "problem", "batches")}
        check_options("mlhf meta-training", options, TRAINER_RANGES)
        check_representable("mlhf meta-training", options, TRAINER_RANGES, problem.model.dtype)
        defaults = inspect.signature(MetaTrainer.__init__).parameters
        unused = [k for k, objectives in APPLIES_TO.items()
                  if options[k] != defaults[k].default and objective not in objectives]
        if unused:
            raise UserError(f"mlhf meta-training: {', '.join(unused)} do(es) not apply with "
                            f"objective={objective!r}")
        self.problem, self.batches = problem, batches
        model = problem.model
        self.xp, self.dtype = model.xp, model.dtype
        self.T, self.reset_prob, self.store_every = int(T), float(reset_prob), int(store_every)
        self.clip, self.noise, self.noise_draw = clip, noise, noise_draw
        self.ls_scale = LS_SCALE[ls_form]
        self.restart = check_restart(restart, "meta-train")
        self.nets = MLHFNets(hidden, use_rnn_p=use_rnn_p, n=n, b_mt=batches.batch_size,
                              inputs=inputs, loss_input=loss_input)
        self.theta = self.nets.init(seed, self.xp, self.dtype)
        if init_damping is not None:
            if (not isinstance(init_damping, (int, float)) or isinstance(init_damping, bool)
                    or not init_damping > self.nets.s_min):
                raise UserError(f"init_damping={init_damping!r}: give a damping above "
                                f"s_min = {self.nets.s_min:g}, e.g. 2")
            self.theta = self.nets.damping_bias(self.theta, float(init_damping))
        if train == "p" and not use_rnn_p:
            raise UserError("train=p trains RNN_p, which use_rnn_p=false leaves out")
        self.train, self.objective = train, objective
        self.trained = {"sp": slice(0, self.nets.size), "s": slice(0, self.nets.size_s),
                        "p": slice(self.nets.size_s, self.nets.size)}[train]
        self.es = None
        if objective == "es":
            from .mlhf_es import WholeRunES, es_coordinates
            self.trained = es_coordinates(self.nets, train, model.layout.kinds, es_params)
            self.es = WholeRunES(self, es_pairs, es_sigma, es_steps, es_cap, workers)
        n_trained = len(np.arange(self.nets.size)[self.trained])
        self.max_grad_norm = max_grad_norm
        self.adam = MetaAdam(n_trained, meta_lr, l2, None if max_grad_norm == "theta" else
                             max_grad_norm, xp=self.xp, dtype=self.dtype)
        self.rows = self.nets.rows(model.layout)
        self.replay = ReplayBuffer(buffer)
        self.rng = np.random.default_rng([seed, 1])
        self.iteration = 0
        self.w = None
        self._pending = None            # the last batch of an unroll starts the next one
        self._held_out = (None, None)   # (arguments, windows) of held_out()

    def _zero_states(self):
        """Zero LSTM states of both meta-nets (the start of an unroll after a reset)."""
        return self.nets.zero_states(self.rows, self.xp, self.dtype)

    def _fresh_weights(self):
        return self.problem.model.init(int(self.rng.integers(2 ** 31)))

    def _reset(self):
        """Experience replay: a stored or fresh target net, zero RNN states, no d/r."""
        w = self.replay.sample(self.rng, self._fresh_weights)
        model = self.problem.model
        self.w = backend.to_device(np.asarray(backend.asnumpy(w), dtype=model.dtype), model.device)
        self.states = self._zero_states()
        self.d_prev = self.r_prev = None

    def _draw_noise(self):
        """The unroll's T step-noise factors U(1 − noise, 1 + noise): numbers
        (``noise_draw="step"``) or vectors of one per coordinate, in the target net's
        dtype and on its device (``"coordinate"``); None without noise."""
        if not self.noise:
            return None
        low, high = 1 - self.noise, 1 + self.noise
        if self.noise_draw == "step":
            return list(self.rng.uniform(low, high, self.T))
        model = self.problem.model
        return [backend.to_device(self.rng.uniform(low, high, model.num_params).astype(self.dtype),
                                  model.device) for _ in range(self.T)]

    def meta_step(self):
        """One meta-iteration: maybe reset, unroll T steps, Adam update. Returns stats."""
        if self.es is not None:
            return self._es_step()
        reset = self.w is None or self.rng.random() < self.reset_prob
        if reset:
            self._reset()
        if self.iteration % self.store_every == 0:
            self.replay.store(self.w)
        batches = [self._pending or next(self.batches)] + [next(self.batches) for _ in range(self.T)]
        noise = self._draw_noise()
        t0 = time.perf_counter()
        if self.objective.startswith("horizon"):
            from .mlhf_horizon import horizon_unroll     # (that module builds on this one)
            res = horizon_unroll(self.nets, self.theta, self.problem, self.w, self.states,
                                 self.d_prev, self.r_prev, batches, self.rows, lr=1.0,
                                 clip=self.clip, noise=noise, train=self.train,
                                 log=self.objective == "horizon-log", restart=self.restart)
        else:
            res = unroll(self.nets, self.theta, self.problem, self.w, self.states, self.d_prev,
                         self.r_prev, batches, self.rows, lr=1.0, clip=self.clip, noise=noise,
                         train=self.train, record=False, restart=self.restart,
                         ls_scale=self.ls_scale)
        grad_norm = self._adam_step(res.grad[self.trained])
        self.w, self.d_prev, self.r_prev, self._pending = res.w, res.d_prev, res.r_prev, batches[-1]
        if not bool(self.xp.isfinite(self.w).all()):    # on the device: no host copy of w
            self.w = None                                   # diverged target net: reset next time
        self.iteration += 1
        return {"iteration": self.iteration, "reset": reset, "grad_norm": grad_norm,
                "wall": time.perf_counter() - t0, **res.stats}

    def _adam_step(self, grad):
        """Adam on the trained coordinates of ``theta`` (a new array); the gradient norm."""
        theta = self.theta.copy()
        limit = (float(self.xp.linalg.norm(theta)) if self.max_grad_norm == "theta"
                 else None)                       # None: the constructor's max_grad_norm
        theta[self.trained], grad_norm = self.adam.update(theta[self.trained], grad, limit)
        self.theta = theta
        return grad_norm

    def _es_step(self):
        """One meta-iteration of ``objective="es"``: 2 · es_pairs whole runs, Adam update."""
        t0 = time.perf_counter()
        grad, stats = self.es.gradient(self.theta, self.trained)
        grad_norm = self._adam_step(grad)
        self.iteration += 1
        return {"iteration": self.iteration, "grad_norm": grad_norm,
                "wall": time.perf_counter() - t0, **stats}

    def held_out(self, starts=4, warm=(0, 30), seed=12345):
        """The fixed held-out windows of :meth:`evaluate`, made once per argument set.

        For each warm-up length ``k`` in ``warm`` and each of ``starts`` fresh
        target nets (:func:`held_out_start`, batches of the meta split far past
        any meta-training step): the untrained MLHF of the *default*
        configuration (``MLHFNets()``, meta-parameters ``init(0)``: the same
        for every trainer) trains the net for k steps with the meta-training
        step clip; then this trainer's untrained MLHF (``self.nets.init(0)``,
        the reference) runs T more steps from zero RNN states and no d/r -- the
        state after an experience-replay reset -- recording their
        stop-gradient constants (a :class:`Frozen`).  Meta-training replays
        nets at every stage of training, so the windows take some fresh and
        some partly trained ones.  Returns ``[(w, batches, frozen)]``.

        Why a fixed warm-up optimizer: 30 clipped steps amplify any difference
        between configurations (measured on cnn-small: with and without
        RNN_p, whose untrained P is constant to 0.1%, the windows' l_p was
        -0.979 and -0.980 from fresh nets but -0.629 and -0.570 from 30-step
        nets), so configurations compared on their own warm-ups (Figure 4's
        ablation) were scored on different nets.
        """
        key = (int(starts), tuple(warm), int(seed))
        if self._held_out[0] != key:
            model, windows = self.problem.model, []
            reference = self.nets.init(0, self.xp, self.dtype)
            warm_nets = MLHFNets(b_mt=self.nets.b_mt)
            warm_theta = warm_nets.init(0, self.xp, self.dtype)
            for k in warm:
                for j in range(starts):
                    w, batches = held_out_start(model, self.batches, self.T, j, seed, warm=k)
                    if k:
                        w = unroll(warm_nets, warm_theta, self.problem, w,
                                   warm_nets.zero_states(self.rows, self.xp, self.dtype),
                                   None, None, batches[:k + 1], self.rows, clip=self.clip,
                                   backward=False, record=False).w
                    batches = batches[k:]
                    frozen = unroll(self.nets, reference, self.problem, w, self._zero_states(),
                                    None, None, batches, self.rows, clip=self.clip,
                                    backward=False, ls_scale=self.ls_scale).frozen
                    windows.append((w, batches, frozen))
            self._held_out = (key, windows)
        return self._held_out[1]

    def evaluate(self, theta=None, starts=4, warm=(0, 30), seed=12345):
        """Meta-losses on fixed states and the training loss reached, for ``theta``
        (no update), on the windows of :meth:`held_out`.

        * ``l_p``, ``l_s``, ``residual``: the meta-losses (and mean ‖r_n‖) as the
          meta-gradient defines them (l_s in this trainer's ``ls_form``) -- with
          the paper's stop-gradients, at the
          windows' recorded w^t, g^t, d_0^t, r_0^t and RNN inputs (the
          :class:`Frozen` replay; the LSTM states run with ``theta``).  The
          same states for every ``theta``, so a change is the meta-nets' doing.
        * ``loss_end``: the training loss after ``theta``'s own T steps from
          each window's start net (no step noise).

        Why not l_p and l_s along ``theta``'s own steps: both shrink in size as
        the target net gets better (l_p ≈ −sqrt(gᵀA⁻¹g) falls with the gradient,
        l_s with the loss decrease left), so an optimizer that trains faster
        *raises* them there.  Measured on cnn-small (24 windows): the shipped
        MLHF lowers the loss after 10 steps from nets 30 steps into training
        (0.0941 → 0.0761, on 23 of 24) while raising those rollout l_p and l_s.
        """
        theta = self.theta if theta is None else theta
        out = {"l_p": [], "l_s": [], "residual": [], "loss_end": []}
        for w, batches, frozen in self.held_out(starts, warm, seed):
            fixed = unroll(self.nets, theta, self.problem, w, self._zero_states(), None, None,
                           batches, self.rows, clip=self.clip, frozen=frozen, backward=False,
                           ls_scale=self.ls_scale)
            own = unroll(self.nets, theta, self.problem, w, self._zero_states(), None, None,
                         batches, self.rows, clip=self.clip, backward=False, record=False,
                         restart=self.restart)
            for key, value in (("l_p", fixed.l_p), ("l_s", fixed.l_s),
                               ("residual", fixed.stats["residual"]),
                               ("loss_end", own.stats["loss_end"])):
                out[key].append(value)
        return {key: float(np.mean(v)) for key, v in out.items()}

    def run(self, iterations, on_iteration=None, should_stop=None):
        """Run ``iterations`` meta-iterations, fewer if ``should_stop()`` turns true (asked
        before each); ``on_iteration(stats)`` after each.  Returns the stats."""
        history = []
        for _ in range(int(iterations)):
            if should_stop and should_stop():
                break
            stats = self.meta_step()
            history.append(stats)
            if on_iteration:
                on_iteration(stats)
        if self.es is not None:
            self.es.close()
        return history

    def save(self, path, command="", model_name=None):
        self.nets.save(path, self.theta,
                       extra_config={"model": model_name or self.problem.model.name,
                                     "trained_kinds": self.problem.model.layout.kinds,
                                     "T": self.T, "iterations": self.iteration,
                                     "train": self.train, "objective": self.objective,
                                     "restart": self.restart,
                                     "command": command},
                       extra={"adam": self.adam.state_dict(), "iteration": self.iteration,
                              **draws_state(self.rng, self.batches)})

    def resume_from(self, path):
        """Continue meta-training from :meth:`save`'s file: meta-parameters, Adam state (when
        the same meta-nets are trained), iteration count, and the positions of the data
        stream and of the random draws (resets, step noise, ES perturbations), so a resumed
        run goes on to new batches and draws (files from before they were saved start both
        afresh).  The replay buffer and the target net under way start afresh (the buffer
        holds up to ``buffer`` copies of the target net's weights, too large to checkpoint),
        so unlike ``hfmeta train --resume`` a resumed unroll meta-training does not repeat
        the uninterrupted one bit for bit; ES, which keeps neither, does."""
        nets, theta, config, extra = MLHFNets.load(path, self.xp, self.dtype)
        if nets.config() != {**self.nets.config(), "b_mt": nets.b_mt}:
            raise UserError(f"{path}: meta-nets configured differently from this meta-training")
        self.theta = theta
        if ("adam" in extra and config.get("train", "sp") == self.train
                and len(extra["adam"]["m"]) == len(self.adam.m)):   # the same coordinates
            self.adam.load_state_dict(extra["adam"], self.xp)    # else: fresh Adam moments
        self.iteration = int(extra.get("iteration", 0))
        self.rng = restore_draws(extra, self.rng, self.batches)
