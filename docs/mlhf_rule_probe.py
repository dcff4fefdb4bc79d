"""Can a *nonlinear* rule of what each coordinate sees, signs included, precondition PCG?

Extends section 4 of ``docs/mlhf_probe.py``: there a log-linear rule of the magnitudes
log|g|, log|d_0|, log|r_0|, log diag G closed 15-22% of the l_p gap between n = 4 and
n = 20 on held-out solves.  RNN_p sees signed inputs (tanh of g, d_0, r_0), so a sign
pattern (say, r_0 and d_0 agreeing) is information the log-linear rule never had.  Here
the rule is a small network per parameter kind (features → ``--hidden`` tanh units →
log P), fitted by Adam through :func:`hfmeta.pcg.pcg_backward` on the even solves and
scored on the odd ones, with

* ``magnitudes``: (log|g|, log|d_0|, log|r_0|, log diag G), the probe's features;
* ``signed``: those and sign g, sign d_0, sign r_0 and their three pairwise products.

Features are standardised per kind over the fitted solves.

``--meta FILE`` (repeatable) scores meta-trained RNN_p's on the same solves: each
runs along the unrolls (its LSTM state carried from t = 0, inputs as in MLHF) and
its P^t is used at n = 4 -- what meta-training found, beside what a fitted rule can
reach.  ``--damping-from FILE`` damps every step with the RNN_s of an MLHF meta
file (along the unrolls, as in MLHF) instead of the constant ``--damping``: the
n = 4 and n = 20 baselines and every P are then scored at that damping, so an
RNN_p trained beside that RNN_s is scored at the damping it was trained with.
``--jacobi`` scores P = diag G + s (the exact GGN diagonal) and P = s.
``--kind-scales`` adds one P scale per parameter kind fitted on the even solves
(no feature at all): how much of an RNN_p's gain a kind-wise constant gives.
Writes a markdown table::

    python docs/mlhf_rule_probe.py [--damping S | --damping-from FILE] [--starts 3] \
        [--hidden 32] [--meta FILE ...] [--skip-rules] [--jacobi] [--kind-scales] \
        [--out FILE]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from mlhf_probe import (T, adam_descent, fit_local_rule, l_p_with_log_p,  # noqa: E402
                        local_rule_log_p, warm_solves)

from hfmeta.data import open_dataset  # noqa: E402
from hfmeta.meta.mlhf import S_MIN, SOFTPLUS, MLHFNets  # noqa: E402
from hfmeta.meta.preprocess import build_inputs  # noqa: E402
from hfmeta.models import build  # noqa: E402
from hfmeta.problem import Problem  # noqa: E402

RULE_STEPS = 300


def features(solve, signed):
    """Per-coordinate features (N, F) of one solve (see the module docstring)."""
    g, d0, r0 = solve[1], solve[2], solve[7]
    logs = solve[3][:, 1:]                                 # log|g|, log|d_0|, log|r_0|, log diag G
    if not signed:
        return logs
    sg, sd, sr = np.sign(g), np.sign(d0), np.sign(r0)
    return np.concatenate([logs, np.stack([sg, sd, sr, sg * sd, sg * sr, sd * sr], 1)], 1)


class Rule:
    """log P = tanh(X W1 + b1) w2 + b2 per kind; parameters in one flat vector."""

    def __init__(self, kinds, n_features, hidden):
        self.kinds, self.F, self.H = kinds, n_features, hidden
        self.per_kind = n_features * hidden + hidden + hidden + 1

    def init(self, rng):
        theta = []
        for _ in self.kinds:
            theta += [rng.normal(0, 1 / math.sqrt(self.F), self.F * self.H),
                      np.zeros(self.H), np.zeros(self.H), np.zeros(1)]
        return np.concatenate(theta)

    def _split(self, theta, j):
        p = theta[j * self.per_kind:(j + 1) * self.per_kind]
        F, H = self.F, self.H
        return (p[:F * H].reshape(F, H), p[F * H:F * H + H], p[F * H + H:F * H + 2 * H],
                p[-1])

    def log_p(self, theta, X):
        q, caches = np.empty(X.shape[0]), []
        for j, rows in enumerate(self.kinds):
            W1, b1, w2, b2 = self._split(theta, j)
            h = np.tanh(X[rows] @ W1 + b1)
            q[rows] = h @ w2 + b2
            caches.append(h)
        return q, caches

    def backward(self, theta, X, caches, q_bar):
        grad = np.zeros_like(theta)
        for j, rows in enumerate(self.kinds):
            W1, b1, w2, b2 = self._split(theta, j)
            h, qb = caches[j], q_bar[rows]
            pre_bar = np.outer(qb, w2) * (1 - h * h)
            grad[j * self.per_kind:(j + 1) * self.per_kind] = np.concatenate(
                [(X[rows].T @ pre_bar).ravel(), pre_bar.sum(0), h.T @ qb, [qb.sum()]])
        return grad


class RecurrentP:
    """P^t of a meta-trained RNN_p along the probe's unrolls (``observe`` of
    :func:`mlhf_probe.warm_solves`), its LSTM state carried from t = 0."""

    def __init__(self, path, layout):
        self.path = path
        self.nets, theta, _, _ = MLHFNets.load(path, np, np.float64)
        if not self.nets.use_rnn_p:
            raise SystemExit(f"{path} has no RNN_p")
        self.theta_p = self.nets.split(theta)[1]
        self.rows = self.nets.rows(layout)
        self.P, self.state = {}, None

    def observe(self, k, t, g, d0, r0):
        if t == 0:
            self.state = self.nets.rnn_p.zero_state(self.rows, np, np.float64)
        x0 = np.zeros_like(g) if d0 is None else d0
        x = build_inputs(self.nets.preprocess, (g, x0, r0))
        out, self.state, _ = self.nets.rnn_p.step(self.theta_p, self.state, x, self.rows,
                                                  keep_cache=False)
        self.P[k, t] = SOFTPLUS.forward(out[:, 0]) + self.nets.p_min

    def l_p(self, solves):
        """l_p of each solve (k-major, t = 1..T−1) with this RNN_p's P there."""
        return [l_p_with_log_p(sv, np.log(self.P[i // (T - 1), i % (T - 1) + 1]))[0]
                for i, sv in enumerate(solves)]


class RecurrentDamping:
    """s^t of a meta-trained RNN_s along the probe's unrolls (the ``damping`` of
    :func:`mlhf_probe.warm_solves`), inputs (g, d_prev, r_prev) as in MLHF, its
    LSTM state carried from t = 0."""

    def __init__(self, path, layout):
        self.path = path
        self.nets, theta, _, _ = MLHFNets.load(path, np, np.float64)
        if self.nets.loss_input:
            raise SystemExit(f"{path}: an RNN_s with the loss input is not supported here")
        self.theta_s = self.nets.split(theta)[0]
        self.rows = self.nets.rows(layout)
        self.state = None

    def __call__(self, k, t, g, d_prev, r_prev):
        if t == 0:
            self.state = self.nets.rnn_s.zero_state(self.rows, np, np.float64)
        zeros = np.zeros_like(g)
        x = build_inputs(self.nets.preprocess_s, (g, zeros if d_prev is None else d_prev,
                                                  zeros if r_prev is None else r_prev))
        out, self.state, _ = self.nets.rnn_s.step(self.theta_s, self.state, x, self.rows,
                                                  keep_cache=False)
        return SOFTPLUS.forward(out[:, 0]) + self.nets.s_min


def fit_and_score(solves, kinds, signed, hidden, seed=0):
    """Mean l_p of the rule fitted on the even solves: ``{"fit": …, "held-out": …}``."""
    fit, held = solves[0::2], solves[1::2]
    Xs = [features(sv, signed) for sv in solves]
    for rows in kinds:                 # standardise per kind over the fitted solves
        block = np.concatenate([X[rows] for X in Xs[0::2]])
        m, s = block.mean(0), block.std(0) + 1e-12
        for X in Xs:
            X[rows] = (X[rows] - m) / s
    rule = Rule(kinds, Xs[0].shape[1], hidden)

    def value_and_grad(theta):
        total, grad = 0.0, np.zeros_like(theta)
        for sv, X in zip(fit, Xs[0::2]):
            q, caches = rule.log_p(theta, X)
            l_p, q_bar = l_p_with_log_p(sv, q, True)
            total += l_p
            grad += rule.backward(theta, X, caches, q_bar)
        return total / len(fit), grad / len(fit)

    theta = adam_descent(value_and_grad, rule.init(np.random.default_rng(seed)),
                         RULE_STEPS, 0.01)[1]
    return {name: float(np.mean([l_p_with_log_p(sv, rule.log_p(theta, X)[0])[0]
                                 for sv, X in zip(group, Xg)]))
            for name, group, Xg in (("fit", fit, Xs[0::2]), ("held-out", held, Xs[1::2]))}


def fit_kind_scales(solves, kinds):
    """Mean l_p of one P scale per parameter kind (a rule of no feature), fitted on
    the even solves: ``{"fit": …, "held-out": …}``."""
    constant = [sv[:3] + (np.ones((sv[1].size, 1)),) + sv[4:] for sv in solves]
    beta = fit_local_rule(constant[0::2], kinds, RULE_STEPS, 0.05)
    return {name: float(np.mean([l_p_with_log_p(sv, local_rule_log_p(beta, sv[3], kinds))[0]
                                 for sv in group]))
            for name, group in (("fit", constant[0::2]), ("held-out", constant[1::2]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--damping", type=float, default=math.log(2.0) + S_MIN)
    parser.add_argument("--damping-from", default=None, metavar="FILE",
                        help="damp with the RNN_s of this MLHF meta file instead of --damping")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--meta", action="append", default=[], metavar="FILE",
                        help="an MLHF meta file whose RNN_p to score (repeatable)")
    parser.add_argument("--skip-rules", action="store_true", help="score --meta files only")
    parser.add_argument("--kind-scales", action="store_true",
                        help="also fit one P scale per parameter kind (with --skip-rules too)")
    parser.add_argument("--jacobi", action="store_true",
                        help="also score P = diag G + s (Jacobi) and P = s (the damping alone)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    ds = open_dataset(args.data)
    model = build(args.model, ds.image_shape, ds.classes, dtype="float64")
    problem = Problem(model)
    batches = ds.batches("meta", args.batch, seed=0, dtype="float64", augment=ds.default_augment)
    recurrent = [RecurrentP(path, model.layout) for path in args.meta]

    def observe(*step):
        for rnn in recurrent:
            rnn.observe(*step)
    damping = args.damping
    if args.damping_from:
        damping = RecurrentDamping(args.damping_from, model.layout)
        damping_text = f"s from the RNN_s of {os.path.relpath(args.damping_from)}"
        damping_option = f"--damping-from {os.path.relpath(args.damping_from)}"
    else:
        damping_text = f"s = {args.damping:.4g}"
        damping_option = f"--damping {args.damping:.4g}"
    solves = warm_solves(problem, batches, args.starts, damping, observe)
    kinds = [model.layout.kind_slice(k) for k in model.layout.kinds]

    def mean(group, i):
        return float(np.mean([sv[i] for sv in group]))

    def closed(value, group):
        return (mean(group, 4) - value) / (mean(group, 4) - mean(group, 5))

    def row(label, name, group, value):
        lines.append(f"| {label} | {name} {len(group)} | {value:+.4f} | {mean(group, 4):+.4f} | "
                     f"{mean(group, 5):+.4f} | {closed(value, group):.0%} |")
        print(lines[-1], flush=True)

    title = "Meta-trained RNN_p's P" if args.skip_rules else "A nonlinear local rule for P"
    lines = [f"# {title} ({args.model} on {args.data}, batch {args.batch}, "
             f"{damping_text}, {args.starts} held-out unrolls of T = {T})", "",
             f"Made by `python docs/mlhf_rule_probe.py {damping_option} --starts "
             f"{args.starts} --hidden {args.hidden}"
             + "".join(f" --meta {os.path.relpath(path)}" for path in args.meta)
             + " --skip-rules" * args.skip_rules + " --jacobi" * args.jacobi
             + " --kind-scales" * args.kind_scales
             + f"`; {len(solves)} warm-started solves"
             + (f", rules fitted ({RULE_STEPS} Adam steps) on the even ones" if not args.skip_rules
                else "; 'odd': the solves a rule would be scored on")
             + ".", "",
             "| P (n = 4) | solves | l_p | n = 4, P = I | n = 20, P = I | gap closed |",
             "|---|---|---|---|---|---|"]
    for rnn in recurrent:
        values = rnn.l_p(solves)
        for name, group, vals in (("all", solves, values), ("odd", solves[1::2], values[1::2])):
            row(f"RNN_p of {os.path.relpath(rnn.path)}", name, group, float(np.mean(vals)))
    if args.jacobi:     # features[:, 4] = log(diag G + 1e-12), solve[8] = s
        for label, log_p in (("Jacobi, P = diag G + s",
                              lambda sv: np.log(np.exp(sv[3][:, 4]) + sv[8])),
                             ("the damping alone, P = s", lambda sv: np.log(sv[8]))):
            values = [l_p_with_log_p(sv, log_p(sv))[0] for sv in solves]
            for name, group, vals in (("all", solves, values), ("odd", solves[1::2], values[1::2])):
                row(label, name, group, float(np.mean(vals)))
    if args.kind_scales:
        scores = fit_kind_scales(solves, kinds)
        for name, group in (("fit", solves[0::2]), ("held-out", solves[1::2])):
            row("one scale per kind", name, group, scores[name])
    for signed in (False, True) if not args.skip_rules else ():
        scores = fit_and_score(solves, kinds, signed, args.hidden)
        for name, group in (("fit", solves[0::2]), ("held-out", solves[1::2])):
            row(f"rule of {'signed features' if signed else 'magnitudes'}", name, group,
                scores[name])
    lines += ["", f"Wall time: {time.perf_counter() - t0:.0f} s (one core)."]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
