"""What can RNN_p buy?  Measurements behind the MLHF ablation (paper Figure 4).

Writes ``docs/mlhf_probe.md`` (and prints it)::

    python docs/mlhf_probe.py [--meta FILE] [--starts 3] [--out docs/mlhf_probe.md]
    python docs/mlhf_probe.py --model convnet --model-opt width=0.5 --starts 2 \
        --diagonal-only --out docs/mlhf_probe_convnet.md      # sections 4 to 6 only
    python docs/mlhf_probe.py --diagonal-only --damping 0.01 \
        --out docs/mlhf_probe_s0.01.md                        # at another fixed damping

1. **l_p depends on the damping.**  l_p = (1/T) Σ_t −⟨d, g⟩ / sqrt(⟨d, A d⟩)
   with A = G + diag(s); for the exact solve d = A⁻¹g it equals
   −sqrt(gᵀA⁻¹g), which rises (gets worse) when s grows.  So l_p of two
   meta-trained MLHFs differs through RNN_s as well as through RNN_p.  The
   table evaluates the four mixtures of initial (0) and meta-trained (1)
   RNN_s and RNN_p of ``--meta`` with
   :meth:`hfmeta.meta.mlhf_train.MetaTrainer.evaluate`: l_p, l_s and ‖r_n‖ at
   the fixed recorded states of ``--starts`` fresh and as many 30-step-trained
   target nets (T = 10, no step noise), the final loss after each mixture's own
   T steps from those nets.

2. **How far a diagonal preconditioner can close the gap to n = 20** at one
   fixed damping s = softplus(0) + 2e-5 (the untrained RNN_s): the same
   held-out unrolls with PCG warm-started as in MLHF and P = I (n = 2, 4,
   20), the Jacobi preconditioner P = diag G + s from the exact GGN
   diagonal (:func:`hfmeta.diagonal.exact_diag_ggn`; n = 2, 4; P
   approximates A, PCG solves P y = r), and a coordinate search over one
   constant scale of P per parameter kind.  Each row's own steps drive its
   unrolls, so rows differ in the states they visit as well as in P (and
   l_p ≈ −sqrt(gᵀA⁻¹g) grows with the gradient); sections 4 and 5 score
   every P on the same solves.

3. **Which constant damping the held-out unrolls prefer** (P = I, n = 4):
   l_s (the paper's softmax-weighted one-step loss changes, × 10 as in
   meta-training) and the training loss after the T steps, for a few
   constant s.  RNN_s starts at s ≈ 0.69; meta-training moves it where the
   meta-gradient points, which need not be where these numbers point.

4. **How much a diagonal P can buy at all, and how much of it a
   coordinate-wise rule can reach** (float64, the same held-out unrolls
   driven by P = I, every warm-started solve t = 1..T−1): a per-solve
   *oracle* P = exp(q), a free positive diagonal fitted to that one solve's
   l_p by Adam through :func:`hfmeta.pcg.pcg_backward`; then a *local
   rule* of the kind RNN_p could express without memory, fitted by Adam, log P =
   β_kind · (1, log|g|, log|d_0|, log|r_0|, log diag G) per coordinate, fitted
   on the even solves and scored on the odd ones.  The oracle shows how much
   room a diagonal P has; the local rule shows how much of it is
   predictable from what each coordinate sees.

5. **Is that room persistent?**  A coordinate-wise RNN_p with memory could
   carry a per-coordinate P from one step to the next, so the question is
   whether the oracle's P of one solve helps another: the previous solve's
   oracle P used at solve t (same net; with the mean correlation of log P
   between consecutive solves), another net's oracle at the same t, and one
   free diagonal per unroll fitted jointly on that unroll's even solves,
   scored on its odd ones (the best any per-coordinate constant could do).

6. **Is the oracle the solution in disguise?**  PCG here solves P y = r, so
   P = r_0 ⊘ e with e = A⁻¹r_0 (the correction from the warm start d_0 to the
   solution) gives y_0 = e and α_0 = 1: one iteration lands on the solution
   (tests/test_pcg.py).  A positive P can do this only where r_0,i e_i > 0;
   elsewhere the nearest it can come is y_i ≈ 0 (P_i → ∞).  Taking e from
   the n = 20 solve, the table scores that P and P = |r_0 ⊘ e| at n = 4, and
   gives the share of coordinates where the signs agree and the correlation
   of the section-4 oracle's log P with log|r_0 ⊘ e|.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from hfmeta.data import open_dataset
from hfmeta.diagonal import exact_diag_ggn
from hfmeta.meta.mlhf import S_MIN, MLHFNets, clip_step
from hfmeta.meta.mlhf_train import LS_WEIGHT, STEP_CLIP, MetaTrainer, held_out_start, l_p_term
from hfmeta.meta.registry import shipped_path
from hfmeta.models import build
from hfmeta.pcg import pcg, pcg_backward
from hfmeta.problem import Problem

T = 10
SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
ORACLE_STEPS = 60      # Adam steps of the per-solve oracle P
RULE_STEPS = 150       # Adam steps fitting the local rule


def fixed_damping_unrolls(problem, batches, starts, n, preconditioner, s_value, full=False):
    """Mean l_p and mean ‖r_n‖ (``full``: also l_s and the final loss) of
    ``starts`` held-out unrolls (the batches and start nets of
    ``MetaTrainer.evaluate``) with constant damping ``s_value`` and
    ``preconditioner(lin, s) -> P or None``."""
    model = problem.model
    l_p, residual, l_s, final = [], [], [], []
    for k in range(starts):
        w, batch = held_out_start(model, batches, T, k)
        d = None
        f, g, lin = problem.loss_and_grad(w, batch[0])
        ls_t = []
        for t in range(T):
            s = np.full_like(g, s_value)
            result = pcg(lambda v: problem.gvp(lin, v, s), g, d, preconditioner(lin, s), n)
            d, r = result.x, result.r
            l_p.append(l_p_term(d, g, r)[0])
            residual.append(float(np.linalg.norm(r)))
            w = w - clip_step(d, w, 1.0, STEP_CLIP) * d
            f_next, g, lin = problem.loss_and_grad(w, batch[t + 1])
            if full:
                f_same = problem.loss_and_grad(w, batch[t])[0]
                ls_t.append(float(f_next) + float(f_same) - 2 * float(f))
            f = f_next
        if full:
            weights = np.exp(np.array(ls_t) - max(ls_t))
            l_s.append(LS_WEIGHT * float(weights @ ls_t / weights.sum()))
            final.append(float(f))
    out = (float(np.mean(l_p)), float(np.mean(residual)))
    return out + (float(np.mean(l_s)), float(np.mean(final))) if full else out


def adam_descent(value_and_grad, x, steps, lr):
    """Plain Adam (β = 0.9, 0.999) on ``x``; returns the best value seen and its x."""
    m, v = np.zeros_like(x), np.zeros_like(x)
    best, best_x = math.inf, x.copy()
    for i in range(1, steps + 1):
        value, grad = value_and_grad(x)
        if value < best:
            best, best_x = value, x.copy()
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        x = x - lr * (m / (1 - 0.9 ** i)) / (np.sqrt(v / (1 - 0.999 ** i)) + 1e-12)
    return best, best_x


def warm_solves(problem, batches, starts, damping, observe=None):
    """Every warm-started solve (t = 1..T−1) of the held-out unrolls driven by
    P = I, n = 4: ``[(apply_A, g, d_0, features (N, 5), l_p with P = I, l_p with n = 20,
    the n = 20 solution, r_0 = g − A d_0, the damping s)]``,
    features = (1, log|g|, log|d_0|, log|r_0|, log diag G) per coordinate.
    ``damping`` is a constant s, or ``damping(k, t, g, d_prev, r_prev) -> s (N,)``
    called at every step (d_prev, r_prev: the previous solve's x_n and r_n, None
    at t = 0), as RNN_s is in MLHF.
    ``observe(k, t, g, d_0, r_0)`` (d_0 None and r_0 = g at t = 0), if given, sees
    every step of unroll k, t = 0 included (a recurrent P's state runs through all)."""
    model, solves = problem.model, []
    for k in range(starts):
        w, batch = held_out_start(model, batches, T, k)
        d = r_prev = None
        g, lin = problem.loss_and_grad(w, batch[0])[1:]
        for t in range(T):
            s = damping(k, t, g, d, r_prev) if callable(damping) else np.full_like(g, damping)
            apply_A = (lambda lin_, s_: lambda v: problem.gvp(lin_, v, s_))(lin, s)
            r0 = g if d is None else g - apply_A(d)        # one product, shared below
            if observe is not None:
                observe(k, t, g, d, r0)
            result = pcg(apply_A, g, d, None, 4, record=False, r0=r0)
            if d is not None:
                logs = [np.log(np.abs(v) + 1e-12) for v in
                        (g, d, r0, exact_diag_ggn(lin, problem.loss_fn))]
                features = np.stack([np.ones_like(g)] + logs, axis=1)
                exact = pcg(apply_A, g, d, None, 20, record=False, r0=r0)
                solves.append((apply_A, g, d, features, l_p_term(result.x, g, result.r)[0],
                               l_p_term(exact.x, g, exact.r)[0], exact.x, r0, s))
            d, r_prev = result.x, result.r
            w = w - clip_step(d, w, 1.0, STEP_CLIP) * d
            g, lin = problem.loss_and_grad(w, batch[t + 1])[1:]
    return solves


def l_p_with_log_p(solve, q, grad=False):
    """l_p of ``solve`` with P = exp(q), n = 4, and (``grad``) ∂l_p/∂q."""
    apply_A, g, d0 = solve[:3]
    P = np.exp(q)
    result = pcg(apply_A, g, d0, P, 4, record=grad, r0=solve[7])
    l_p, d_bar, r_bar = l_p_term(result.x, g, result.r)
    if not grad:
        return l_p, None
    return l_p, pcg_backward(result, apply_A, d_bar, r_bar, need=("P",))["P"] * P


def local_rule_log_p(beta, features, kinds):
    q = np.empty(features.shape[0])
    for j, rows in enumerate(kinds):
        q[rows] = features[rows] @ beta[j]
    return q


def fit_local_rule(solves, kinds, steps, lr):
    """β (kinds × 5) minimising the mean l_p over ``solves`` (Adam)."""
    def value_and_grad(beta):
        total, grad = 0.0, np.zeros_like(beta)
        for solve in solves:
            l_p, q_bar = l_p_with_log_p(solve, local_rule_log_p(beta, solve[3], kinds), True)
            total += l_p
            for j, rows in enumerate(kinds):
                grad[j] += solve[3][rows].T @ q_bar[rows]
        return total / len(solves), grad / len(solves)
    return adam_descent(value_and_grad, np.zeros((len(kinds), solves[0][3].shape[1])), steps, lr)[1]


def fit_shared_log_p(solves, steps, lr):
    """One free log P shared by ``solves``, minimising their mean l_p (Adam)."""
    def value_and_grad(q):
        total, grad = 0.0, np.zeros_like(q)
        for solve in solves:
            l_p, q_bar = l_p_with_log_p(solve, q, True)
            total, grad = total + l_p, grad + q_bar
        return total / len(solves), grad / len(solves)
    return adam_descent(value_and_grad, np.zeros_like(solves[0][1]), steps, lr)[1]


def persistence(solves, oracle_q, starts):
    """Section 5: ``[(label, group, l_p)]`` where ``group`` are the solves scored.

    Solves come ``T − 1`` per unroll (t = 1..T−1), unroll k at rows k(T−1)….
    """
    per = T - 1
    later = [k * per + t for k in range(starts) for t in range(1, per)]
    other = [((k + 1) % starts) * per + t for k in range(starts) for t in range(1, per)]
    rows = [("the previous solve's oracle P (same net, t − 1)", [solves[i] for i in later],
             [l_p_with_log_p(solves[i], oracle_q[i - 1])[0] for i in later])]
    if starts > 1:
        rows.append(("another net's oracle P at the same t", [solves[i] for i in later],
                     [l_p_with_log_p(solves[i], oracle_q[j])[0] for i, j in zip(later, other)]))
    fitted, scored, fit_lp, scored_lp = [], [], [], []
    for k in range(starts):
        unroll = solves[k * per:(k + 1) * per]
        q = fit_shared_log_p(unroll[0::2], ORACLE_STEPS, 0.1)
        for group, out, part in ((fitted, fit_lp, unroll[0::2]), (scored, scored_lp, unroll[1::2])):
            group += part
            out += [l_p_with_log_p(sv, q)[0] for sv in part]
    rows += [("one P per unroll, fitted on its even solves", fitted, fit_lp),
             ("one P per unroll, scored on its odd solves", scored, scored_lp)]
    correlation = float(np.mean([np.corrcoef(oracle_q[i], oracle_q[i - 1])[0, 1] for i in later]))
    return rows, correlation


DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "mlhf_probe.md")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", default=shipped_path("mlhf_paper"))
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a zoo model option, e.g. width=0.5 (repeatable)")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--diagonal-only", action="store_true",
                        help="only sections 4 to 6 (float64; no meta-net evaluation)")
    parser.add_argument("--damping", type=float, default=None,
                        help="the fixed damping s of sections 2 and 4-6 "
                             "(default softplus(0) + s_min, the untrained RNN_s's)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    model_options = {key: float(value) for key, value in
                     (option.split("=", 1) for option in args.model_opt)}
    t0 = time.perf_counter()
    nets, theta1, config, _ = MLHFNets.load(args.meta, np, np.float32)
    ds = open_dataset(args.data)
    described = " ".join([args.model] + [f"{k}={v:g}" for k, v in model_options.items()])
    command = " ".join(["python docs/mlhf_probe.py", f"--meta {os.path.relpath(args.meta)}"]
                       + [f"--model {args.model}"] * (args.model != "cnn-small")
                       + [f"--model-opt {option}" for option in args.model_opt]
                       + [f"--starts {args.starts}"] + ["--diagonal-only"] * args.diagonal_only
                       + ([f"--damping {args.damping:g}"] if args.damping is not None else [])
                       + [f"--out {os.path.relpath(args.out)}"] * (args.out != DEFAULT_OUT))
    lines = [f"# MLHF probe: what RNN_p can buy ({described} on {args.data}, "
             f"{args.starts} held-out unrolls of T = {T})", "",
             f"Made by `{command}`; see the script's docstring for what is measured."]
    s_value = math.log(2.0) + S_MIN if args.damping is None else args.damping
    if not args.diagonal_only:
        lines += meta_net_and_damping_sections(args, model_options, nets, theta1, ds, s_value)
    lines += diagonal_sections(args, model_options, nets.b_mt, ds, s_value)
    lines += ["", f"Wall time: {time.perf_counter() - t0:.0f} s (one core)."]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))


def meta_net_and_damping_sections(args, model_options, nets, theta1, ds, s_value):
    """Sections 1-3 (float32): the four meta-net mixtures, fixed-damping
    preconditioners along driven unrolls, constant dampings."""
    model = build(args.model, ds.image_shape, ds.classes, dtype="float32", **model_options)
    problem = Problem(model)
    batches = ds.batches("meta", nets.b_mt, seed=0, dtype="float32",
                         augment=ds.default_augment)
    trainer = MetaTrainer(problem, batches, T=T, n=nets.n, hidden=nets.hidden,
                          use_rnn_p=nets.use_rnn_p, inputs=nets.inputs, seed=0)
    theta0, n_s = trainer.theta, nets.size_s
    lines = ["", "## 1. l_p moves with RNN_s's damping", "",
             f"`MetaTrainer.evaluate`: {args.starts} fresh and {args.starts} 30-step-trained "
             f"nets, meta-losses at fixed recorded states, final loss after each row's own "
             f"T steps.", "",
             "| RNN_s | RNN_p | l_p | l_s | mean ‖r_n‖ | final loss |", "|---|---|---|---|---|---|"]
    for name_s, th_s in (("initial", theta0), ("meta-trained", theta1)):
        for name_p, th_p in (("initial", theta0), ("meta-trained", theta1)):
            theta = np.concatenate([th_s[:n_s], th_p[n_s:]])
            ev = trainer.evaluate(theta, starts=args.starts)
            lines.append(f"| {name_s} | {name_p} | {ev['l_p']:+.4f} | {ev['l_s']:+.4f} | "
                         f"{ev['residual']:.4f} | {ev['loss_end']:.4f} |")
            print(lines[-1], flush=True)

    identity = lambda lin, s: None                         # noqa: E731

    def jacobi(lin, s):                       # P ≈ A: PCG solves P y = r
        return exact_diag_ggn(lin, problem.loss_fn) + s

    lines += ["", f"## 2. Diagonal preconditioners at fixed damping s = {s_value:.4f}", "",
              "| preconditioner | n | l_p | mean ‖r_n‖ |", "|---|---|---|---|"]
    for label, n, prec in (("P = I", 20, identity), ("P = I", 4, identity),
                           ("P = I", 2, identity), ("Jacobi diag G + s", 4, jacobi),
                           ("Jacobi diag G + s", 2, jacobi)):
        l_p, res = fixed_damping_unrolls(problem, batches, args.starts, n, prec, s_value)
        lines.append(f"| {label} | {n} | {l_p:+.4f} | {res:.4f} |")
        print(lines[-1], flush=True)

    kinds = {k: model.layout.kind_slice(k) for k in model.layout.kinds}

    def per_kind(scales):
        def prec(lin, s):
            P = np.ones_like(s)
            for kind, rows in kinds.items():
                P[rows] = scales[kind]
            return P
        return prec

    best = {k: 1.0 for k in kinds}
    best_lp = fixed_damping_unrolls(problem, batches, args.starts, 4, per_kind(best), s_value)[0]
    for kind in kinds:                                      # coordinate search, one pass
        for scale in SCALES:
            trial = {**best, kind: scale}
            l_p, res = fixed_damping_unrolls(problem, batches, args.starts, 4, per_kind(trial),
                                             s_value)
            lines.append(f"| P = {scale:g} on {kind}, else as found so far | 4 | {l_p:+.4f} | "
                         f"{res:.4f} |")
            print(lines[-1], flush=True)
            if l_p < best_lp:
                best, best_lp = trial, l_p
    lines += ["", f"Best per-kind scales found: {best} (l_p {best_lp:+.4f}, n = 4).", "",
              "## 3. Constant damping on the held-out unrolls (P = I, n = 4)", "",
              "| s | l_s | final loss | l_p | mean ‖r_n‖ |", "|---|---|---|---|---|"]
    for s_const in (0.25, 0.5, s_value, 1.0, 2.0):
        l_p, res, l_s, final = fixed_damping_unrolls(problem, batches, args.starts, 4, identity,
                                                     s_const, full=True)
        lines.append(f"| {s_const:.4g} | {l_s:+.4f} | {final:.4f} | {l_p:+.4f} | {res:.4f} |")
        print(lines[-1], flush=True)
    return lines


def diagonal_sections(args, model_options, b_mt, ds, s_value):
    """Sections 4 and 5 (float64): the per-solve oracle, the local rule, and
    whether the oracle's P carries over to other solves."""
    model64 = build(args.model, ds.image_shape, ds.classes, dtype="float64", **model_options)
    problem64 = Problem(model64)
    batches64 = ds.batches("meta", b_mt, seed=0, dtype="float64", augment=ds.default_augment)
    solves = warm_solves(problem64, batches64, args.starts, s_value)
    kinds64 = [model64.layout.kind_slice(k) for k in model64.layout.kinds]
    oracle_fits = [adam_descent(lambda q, sv=sv: l_p_with_log_p(sv, q, True),
                                np.zeros_like(sv[1]), ORACLE_STEPS, 0.1) for sv in solves]
    oracle, oracle_q = [v for v, _ in oracle_fits], [q for _, q in oracle_fits]
    fit, held_out = solves[0::2], solves[1::2]
    beta = fit_local_rule(fit, kinds64, RULE_STEPS, 0.05)
    rule = {name: float(np.mean([l_p_with_log_p(sv, local_rule_log_p(beta, sv[3], kinds64))[0]
                                 for sv in group]))
            for name, group in (("fit", fit), ("held-out", held_out))}

    def mean(group, i):
        return float(np.mean([sv[i] for sv in group]))

    def closed(value, group):
        return (mean(group, 4) - value) / (mean(group, 4) - mean(group, 5))

    lines = ["", "## 4. How much a diagonal P can buy, and how much a local rule reaches", "",
              f"float64, the {len(solves)} warm-started solves (t = 1..{T - 1}) of the held-out "
              f"unrolls driven by P = I, n = 4, s = {s_value:.4f}; 'gap closed' = the share of "
              "the l_p difference between n = 4 and n = 20 (P = I) recovered at n = 4.", "",
              "| P (n = 4) | solves | l_p | n = 4, P = I | n = 20, P = I | gap closed |",
              "|---|---|---|---|---|---|",
              f"| per-solve oracle (free diagonal, {ORACLE_STEPS} Adam steps on that solve) | "
              f"all {len(solves)} | {np.mean(oracle):+.4f} | {mean(solves, 4):+.4f} | "
              f"{mean(solves, 5):+.4f} | {closed(np.mean(oracle), solves):.0%} |"]
    for name, group in (("fit", fit), ("held-out", held_out)):
        lines.append(f"| local log-linear rule (fitted on the even solves) | {name} "
                     f"{len(group)} | {rule[name]:+.4f} | {mean(group, 4):+.4f} | "
                     f"{mean(group, 5):+.4f} | {closed(rule[name], group):.0%} |")
    lines += ["", "A diagonal P has room: fitted to one solve it recovers "
              f"{closed(np.mean(oracle), solves):.0%} of the gap.  What each coordinate sees "
              "predicts little of it: a log-linear rule of g, d_0, r_0 and diag G (RNN_p sees "
              "only the first three), fitted by Adam on the even solves, recovers "
              f"{closed(rule['held-out'], held_out):.0%} on the odd ones.", "",
              "Local rule, log P = β · (1, log|g|, log|d_0|, log|r_0|, log diag G):", "",
              "| kind | 1 | log\\|g\\| | log\\|d_0\\| | log\\|r_0\\| | log diag G |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {kind} | " + " | ".join(f"{b:+.3f}" for b in beta[j]) + " |"
              for j, kind in enumerate(model64.layout.kinds)]
    print("\n".join(lines[-14:]), flush=True)

    rows, correlation = persistence(solves, oracle_q, args.starts)
    lines += ["", "## 5. Does the oracle's P carry over to other solves?", "",
              "A coordinate-wise RNN_p keeps a state per coordinate, so it could carry a P "
              "from step to step.  Here the oracle P of section 4 (or one fitted to several "
              "solves) is used on solves it was not fitted to.", "",
              "| P (n = 4) | solves | l_p | n = 4, P = I | n = 20, P = I | gap closed |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {len(group)} | {np.mean(values):+.4f} | {mean(group, 4):+.4f} | "
              f"{mean(group, 5):+.4f} | {closed(np.mean(values), group):.0%} |"
              for label, group, values in rows]
    lines += ["", f"Mean correlation of the oracle's log P between consecutive solves of one "
              f"net: {correlation:.3f}."]
    print("\n".join(lines[-len(rows) - 2:]), flush=True)
    lines += solution_ratio_section(solves, oracle_q, mean, closed)
    print("\n".join(lines[-8:]), flush=True)
    return lines


def solution_ratio_preconditioners(solve):
    """Section 6: (P = r_0 ⊘ e where positive else ≈ ∞, P = |r_0 ⊘ e|, log|r_0 ⊘ e|,
    share of r_0,i e_i > 0) with e = x_20 − d_0, the n = 20 solve's correction."""
    d0, r0 = solve[2], solve[7]
    e = solve[6] - d0
    same_sign = r0 * e > 0
    ratio = np.abs(r0) / np.maximum(np.abs(e), 1e-300)
    ratio = np.where(ratio > 0, ratio, ratio[ratio > 0].min())       # r_0,i = 0: any P
    signed = np.where(same_sign, ratio, 1e6 * ratio[same_sign].max())  # y_i ≈ 0
    return signed, ratio, np.log(ratio), float(same_sign.mean())


def solution_ratio_section(solves, oracle_q, mean, closed):
    signed, absolute, correlation, share = [], [], [], []
    for solve, q in zip(solves, oracle_q):
        P_signed, P_abs, log_ratio, positive = solution_ratio_preconditioners(solve)
        signed.append(l_p_with_log_p(solve, np.log(P_signed))[0])
        absolute.append(l_p_with_log_p(solve, np.log(P_abs))[0])
        correlation.append(float(np.corrcoef(q, log_ratio)[0, 1]))
        share.append(positive)
    lines = ["", "## 6. Is the oracle the solution in disguise?", "",
             "P = r_0 ⊘ e with e = A⁻¹r_0 makes PCG exact in one iteration; here e is the "
             "correction of the n = 20 solve and P is scored at n = 4 on the solves of "
             f"section 4. On average {np.mean(share):.0%} of the coordinates have "
             "r_0,i e_i > 0, where a positive P can follow e.", "",
             "| P (n = 4) | solves | l_p | n = 4, P = I | n = 20, P = I | gap closed |",
             "|---|---|---|---|---|---|"]
    for label, values in (("r_0 ⊘ e where positive, else 10⁶ × its largest (y_i ≈ 0)", signed),
                          ("\\|r_0 ⊘ e\\|", absolute)):
        lines.append(f"| {label} | {len(solves)} | {np.mean(values):+.4f} | "
                     f"{mean(solves, 4):+.4f} | {mean(solves, 5):+.4f} | "
                     f"{closed(np.mean(values), solves):.0%} |")
    lines += ["", "Mean correlation, over coordinates, of the section-4 oracle's log P with "
              f"log\\|r_0 ⊘ e\\|: {np.mean(correlation):.3f}."]
    return lines


if __name__ == "__main__":
    main()
