"""A longer-horizon meta-objective for MLHF (ours, not the paper's): the loss along the unroll.

Why: the paper's l_s is a one-step loss change with the stop-gradient through
w^t, so however long the unroll, each step's damping is judged by what it
does to the next loss.  On ``cnn-small`` that teaches RNN_s a damping about
twice what a 10-epoch run wants (``docs/mlhf_damping.md``: the short-horizon
bias of greedy meta-objectives, Wu, Ren, Liao & Grosse 2018).  This objective
lets each step answer for every later loss of an unroll of H steps::

    L_H = (1/H) Σ_{t=1..H} l(x^t, w^t),     w^{t+1} = w^t − lr · u_t · c_t · d^t

(u_t the step noise, c_t the step clip's scale min(1, clip‖w^t‖/(lr‖d^t‖)), its
‖w^t‖ taken at the recorded linearization point like g^t, so it varies with
d^t only), or, with ``log=True``, the mean
log-loss (1/H) Σ_t log l(x^t, w^t) (Wichrowska et al. 2017), which weighs the
late, small losses of a run as much as the early ones; treating the target net's
derivatives as constants, as L2L does (Andrychowicz et al. 2016, and
:mod:`hfmeta.meta.unroll`): g^t, the Gauss-Newton linearization at w^t, d_0^t,
r_0^t and the RNN inputs are the paper's stop-gradient constants, but w^t is
*not* stopped -- each step moves every later weight.  Then

    ∂L_H/∂d^t = J_clipᵀ (−lr · u_t ⊙ (1/H) Σ_{k>t} g^k)        (log: g^k / l(x^k, w^k))

(suffix sums of the later gradients), and the PCG backward of step t
(:func:`hfmeta.pcg.pcg_backward`) turns it into s̄^t (and P̄^t); BPTT through
the LSTMs across the unroll does the rest, as in the paper's meta-training.

Dataflow: step t's cotangent needs every later gradient, so the forward pass
keeps each step's PCG tape (x, r, p, A p per iteration: a few flat vectors),
LSTM caches and weights w^t, but not its linearization (H of those would not
fit); the backward sweep recomputes step t's linearization at the recorded
w^t (one more forward+backward pass per step; the same numbers).  Memory:
H × (PCG tape + LSTM caches + w^t), one linearization at a time.

What it learns on ``cnn-small`` (T = 120, RNN_s only): the log-loss version
finds a smaller damping that trains 10 epochs of the held-out split 2.5x
lower than the untrained MLHF on the runs that finish (0.00125 against
0.00318 on seeds 0-4), but at the edge of stability: on seeds 5-14 it
diverges on 4 of 10 (``docs/mlhf_restart.md``).  The gain and the blow-ups
are both the damping it learns for the conv weights (0.23; the other kinds
get 0.59-1.10 against the untrained 0.69), see ``hfmeta/meta/shipped/README.md``.
An experiment, not the paper's method.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .mlhf import SOFTPLUS, clip_step, mlhf_direction, warm_start
from .mlhf_train import (STEP_CLIP, Frozen, UnrollResult, clip_step_vjp, l_p_term,
                         lean_loss_and_grad, step_factor)
from ..pcg import pcg_backward


def horizon_unroll(nets, theta, problem, w, states, d_prev, r_prev, batches, rows, lr=1.0,
                   clip=STEP_CLIP, noise=None, frozen=None, backward=True, train="s", log=False,
                   restart=None):
    """Run H = ``len(batches) − 1`` MLHF steps; L_H and (optionally) its meta-gradient.

    Arguments as :func:`hfmeta.meta.mlhf_train.unroll`.  ``train`` names the
    meta-nets that get a gradient ("s", "p" or "sp"; the other part of the
    gradient is zero).  With ``frozen`` (the :class:`Frozen` of an earlier call)
    each step's linearization point w^t, d_0^t, r_0^t and RNN inputs are taken
    from it, while the weights the losses are taken at move with ``theta``'s
    steps: that is the function whose finite differences the meta-gradient
    must match (``backward`` must then be False).  Returns an
    :class:`UnrollResult` whose ``stats["meta_loss"]`` is L_H (of the log-losses
    with ``log``; ``stats["loss_end"]`` is always the plain loss) (``l_s`` is NaN:
    not computed; ``l_p`` is the paper's, for information).  ``restart`` (a loss
    ratio, or None) restarts PCG cold as the optimizer does
    (:func:`hfmeta.meta.mlhf.restart_due`): a restarted step's d_0^t, r_0^t are
    None in the record, so the replay and the backward take the same steps.
    """
    if frozen is not None and backward:
        raise ValueError("the frozen replay is for finite differences: backward=False")
    xp = backend.get_array_module(theta)
    H = len(batches) - 1
    theta_s, theta_p = nets.split(theta)
    rec = Frozen() if frozen is None else frozen
    need = tuple(k for k in ("s", "P") if backward and k.lower() in train
                 and (k == "s" or nets.use_rnn_p))
    steps, caches_s, caches_p = [], [], []      # per step: (Direction, clip scale)
    objective, later, lp_vals, res_norms = [], [], [], []
    f_t, g_t, lin_t = lean_loss_and_grad(problem, w, batches[0]) if frozen is None else (None,) * 3
    loss_start, f_prev = f_t, None
    for t in range(H):
        if frozen is None:
            d_prev, r_prev, ratio = warm_start(f_t, f_prev, d_prev, r_prev, restart)
            f_prev = f_t
            w_lin = w
            rec.w.append(w)
            rec.d_prev.append(d_prev)
            rec.r_prev.append(r_prev)
            rec.noise.append(step_factor(noise, t))
        else:
            w_lin, d_prev, r_prev = frozen.w[t], frozen.d_prev[t], frozen.r_prev[t]
            f_t, g_t, lin_t = lean_loss_and_grad(problem, w_lin, batches[t])
            if t == 0:
                loss_start = f_t                 # the replay starts from the recorded w^0
        dirn = mlhf_direction(nets, theta, states, problem, lin_t, g_t, d_prev, r_prev, rows,
                              record=True, inputs=None if frozen is None else frozen.inputs[t],
                              loss_ratio=0.0 if frozen is not None else ratio)
        if frozen is None:
            rec.inputs.append((dirn.inputs_s, dirn.inputs_p))
        d, r = dirn.pcg.x, dirn.pcg.r
        lp_vals.append(l_p_term(d, g_t, r)[0])
        res_norms.append(float(xp.linalg.norm(r)))
        u = rec.noise[t]
        scale = clip_step(d, w_lin, lr, clip)
        w = w - (lr * u * scale) * d
        caches_s.append(dirn.cache_s if "s" in need else None)
        caches_p.append(dirn.cache_p if "P" in need else None)
        dirn.apply_A = dirn.cache_s = dirn.cache_p = None    # the linearization is recomputed
        steps.append((dirn, scale) if backward else None)
        del lin_t
        if frozen is None:
            d_prev, r_prev = d, r
            f_t, g_t, lin_t = lean_loss_and_grad(problem, w, batches[t + 1])
            objective.append(float(f_t))
            later.append(g_t / float(f_t) if log else g_t)      # ∇ of (log) l(x^{t+1}, w^{t+1})
        else:
            objective.append(float(problem.loss(w, batches[t + 1])))
    lin_t = None                        # w^H's linearization: not needed
    meta_loss = float(np.mean(np.log(objective) if log else objective))

    grad = None
    if backward:
        grad = xp.zeros_like(theta)
        grad_s, grad_p = nets.split(grad)
        dout_s, dout_p = [None] * H, [None] * H
        suffix = xp.zeros_like(w)
        for t in reversed(range(H)):
            suffix += later[t] / H                              # (1/H) Σ_{k>t} g^k
            dirn, scale = steps[t]              # backward: rec holds this run's w^t and noise
            y = clip_step_vjp(dirn.pcg.x, scale, (-lr * rec.noise[t]) * suffix)
            lin = lean_loss_and_grad(problem, rec.w[t], batches[t])[2]
            s = dirn.s
            bars = pcg_backward(dirn.pcg, lambda v: problem.gvp(lin, v, s), y, None, need=need)
            if "s" in bars:
                dout_s[t] = SOFTPLUS.backward(dirn.out_s[:, 0], bars["s"])[:, None]
            if "P" in bars:
                dout_p[t] = SOFTPLUS.backward(dirn.out_p[:, 0], bars["P"])[:, None]
            steps[t] = None                                     # its PCG tape is done
            del lin
        if "s" in need:
            grad_s[...] = nets.rnn_s.backward(theta_s, caches_s, dout_s, rows, consume=True)[0]
        del caches_s[:]
        if "P" in need:
            grad_p[...] = nets.rnn_p.backward(theta_p, caches_p, dout_p, rows, consume=True)[0]
    stats = {"meta_loss": meta_loss, "l_p": float(np.mean(lp_vals)),
             "residual": float(np.mean(res_norms)),
             "loss": float(np.mean([float(loss_start)] + objective[:-1])),   # l(x^t, w^t), t < H
             "loss_end": objective[-1]}
    return UnrollResult(float("nan"), stats["l_p"], grad, w, d_prev, r_prev, rec, stats)
