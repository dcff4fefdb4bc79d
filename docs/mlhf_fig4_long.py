"""Figure 4's four configurations after long meta-training, scored at common states.

::

    bash docs/mlhf_fig4_long.sh          # meta-trains the four (about 1.2 h on two cores)
    python docs/mlhf_fig4_long.py [--starts 3] [--seed S] [--configs config1,...] \
        [--files docs/mlhf_fig4_long_{}.h5] [--out docs/mlhf_fig4_long.md]

The paper compares l_p and the mean ‖r_n‖ of its four configurations along
meta-training, where each run visits its own target-net states; l_p ≈
−sqrt(gᵀA⁻¹g) grows with the gradient, so such curves mix the solver with the
states.  Here every configuration is run along the *same* sequence of states:
``--starts`` held-out unrolls of T = 10 (the nets and batches of
``MetaTrainer.evaluate``) whose weights are driven by a fixed solver (constant
s = softplus(0) + s_min, P = I, n = 4, warm-started: the untrained RNN_s's
damping).  At each state t a configuration runs its own MLHF step
(:func:`hfmeta.meta.mlhf.mlhf_direction`: its RNN_s damping, its RNN_p's P or
P = I, its n), warm-started from its own previous solution, its LSTM states
carried from t = 0; its step is not taken.  So g and the GGN are the same for
all four and only the solver differs, damping included, as in the paper.

For each configuration the table gives, over all T·starts steps (float64):
l_p = mean of −⟨d_n, g⟩/sqrt(⟨d_n, A d_n⟩) and the mean ‖r_n‖, with the
meta-nets at initialisation (``--seed``, as ``meta-train`` starts them) and after
meta-training (``docs/mlhf_fig4_long_config*.h5``); and, at the trained RNN_s's
damping, PCG with P = I at n = 2, 4 and 20 (each warm-started from its own
previous solution), so the share of the gap from P = I to n = 20 that RNN_p
closes at the configuration's n is read off.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from hfmeta.data import open_dataset
from hfmeta.meta.mlhf import S_MIN, MLHFNets, clip_step, mlhf_direction
from hfmeta.meta.mlhf_train import STEP_CLIP, held_out_start, l_p_term
from hfmeta.models import build
from hfmeta.pcg import pcg
from hfmeta.problem import Problem

HERE = os.path.dirname(os.path.abspath(__file__))
T = 10
FILES = os.path.join(HERE, "mlhf_fig4_long_{}.h5")
BASELINES = (2, 4, 20)          # PCG iterations with P = I at each trained damping
CONFIGS = {"config1": "(1) no RNN_p, n = 20", "config2": "(2) no RNN_p, n = 4",
           "config3": "(3) RNN_p, n = 2", "config4": "(4) RNN_p, n = 4"}


def common_states(problem, batches, starts):
    """``[[(g, lin), …T], …starts]``: the states of the driven unrolls (module docstring)."""
    model, unrolls = problem.model, []
    s_value = math.log(2.0) + S_MIN
    for k in range(starts):
        w, batch = held_out_start(model, batches, T, k)
        d, states = None, []
        for t in range(T):
            g, lin = problem.loss_and_grad(w, batch[t])[1:]
            states.append((g, lin))
            s = np.full_like(g, s_value)
            d = pcg(lambda v: problem.gvp(lin, v, s), g, d, None, 4).x
            w = w - clip_step(d, w, 1.0, STEP_CLIP) * d
        unrolls.append(states)
    return unrolls


def score(nets, theta, problem, unrolls, rows, baselines=False):
    """Mean l_p and ‖r_n‖ of the configuration's own solver along ``unrolls``; with
    ``baselines`` also those of P = I with n in :data:`BASELINES` at its RNN_s's
    damping, each warm-started from its own previous solution (keys "own", 2, 4, 20)."""
    per_step = {}      # name -> [(l_p term, ‖r_n‖) of each step]

    def add(name, d, g, r):
        per_step.setdefault(name, []).append((l_p_term(d, g, r)[0], float(np.linalg.norm(r))))

    for states_k in unrolls:
        lstm = nets.zero_states(rows, np, np.float64)
        d_prev = r_prev = None
        chains = dict.fromkeys(BASELINES)
        for g, lin in states_k:
            dirn = mlhf_direction(nets, theta, lstm, problem, lin, g, d_prev, r_prev, rows)
            add("own", dirn.pcg.x, g, dirn.pcg.r)
            d_prev, r_prev = dirn.pcg.x, dirn.pcg.r
            if baselines:
                for name, x0 in chains.items():
                    base = pcg(dirn.apply_A, g, x0, None, name)
                    add(name, base.x, g, base.r)
                    chains[name] = base.x
    return {name: tuple(float(v) for v in np.mean(values, axis=0))
            for name, values in per_step.items()}


def meta_log(path):
    """(meta-iterations, wall seconds, {iteration: held-out validation}) of a
    meta-training log."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    steps = [r for r in rows if "wall" in r]
    validations = {r["iteration"]: r["validation"] for r in rows if "validation" in r}
    return len(steps), sum(r["wall"] for r in steps), validations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--files", default=FILES,
                        help="meta files, {} standing for config1..config4")
    parser.add_argument("--seed", type=int, default=0,
                        help="the meta-training seed (it sets the untrained meta-nets)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="which of config1..config4 to score (comma-separated)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    ds = open_dataset("mnist5k")
    model = build("cnn-small", ds.image_shape, ds.classes, dtype="float64")
    problem = Problem(model)
    batches = ds.batches("meta", 128, seed=0, dtype="float64", augment=ds.default_augment)
    unrolls = common_states(problem, batches, args.starts)
    lines = ["# Figure 4: the four configurations after meta-training, at the same states", "",
             f"Made by `python docs/mlhf_fig4_long.py --starts {args.starts}"
             + (f" --seed {args.seed}" if args.seed else "")
             + (f" --configs {args.configs}" if args.configs != ",".join(CONFIGS) else "")
             + (f" --files {os.path.relpath(args.files)}" if os.path.abspath(args.files) != FILES
               else "")
             + "` from the meta files of `bash docs/mlhf_fig4_long.sh` (cnn-small on mnist5k, "
             "b_mt = 128, T = 10, meta lr 0.01, log/sign inputs, both meta-nets trained, "
             f"seed {args.seed}, float32).  "
             f"Scored in float64 along {args.starts} held-out unrolls of T = {T} driven by "
             "s = 0.6932, P = I, n = 4 (see the script's docstring): each configuration's own "
             "damping, P and n, warm-started from its own previous solution.", "",
             "| configuration | meta-iterations (wall s) | l_p untrained → trained | "
             "‖r_n‖ untrained → trained | at the trained RNN_s's damping: l_p with P = I, "
             "n = 2 / 4 / 20 | RNN_p's share of the gap from P = I to n = 20 there |",
             "|---|---|---|---|---|---|"]
    along, along_heads = [], []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: {name!r} is not one of {', '.join(CONFIGS)}")
        label, path = CONFIGS[name], args.files.format(name)
        nets, theta, _, _ = MLHFNets.load(path, np, np.float64)
        rows = nets.rows(model.layout)
        start = nets.init(args.seed, np, np.float32).astype(np.float64)
        before = score(nets, start, problem, unrolls, rows)["own"]
        after = score(nets, theta, problem, unrolls, rows, baselines=True)
        iterations, wall, validations = meta_log(os.path.splitext(path)[0] + ".jsonl")
        along.append(f"| {label} | " + " | ".join(
            f"{v['l_p']:+.4f} ({v['residual']:.4f})" for _, v in sorted(validations.items()))
            + " |")
        along_heads = [str(k) for k in sorted(validations)]
        own, plain, full = after["own"], after[nets.n], after[20]
        closed = (f"{(plain[0] - own[0]) / (plain[0] - full[0]):.0%} (n = {nets.n})"
                  if nets.use_rnn_p else "–")
        lines.append(f"| {label} | {iterations} ({wall:.0f}) | {before[0]:+.4f} → {own[0]:+.4f} | "
                     f"{before[1]:.4f} → {own[1]:.4f} | "
                     + " / ".join(f"{after[n][0]:+.4f}" for n in BASELINES) + f" | {closed} |")
        print(lines[-1], flush=True)
    lines += ["", "`meta-train`'s own held-out evaluations along meta-training "
              "(`MetaTrainer.evaluate`: each configuration at the states its untrained "
              "meta-nets visit, so not the same states across rows), l_p (‖r_n‖) at "
              "meta-iteration:", "",
              "| configuration | " + " | ".join(along_heads) + " |",
              "|---|" + "---|" * len(along_heads)] + along
    lines += ["", f"Wall time: {time.perf_counter() - t0:.0f} s (one core)."]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
