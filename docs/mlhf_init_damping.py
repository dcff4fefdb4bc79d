"""Where RNN_s's damping starts decides whether the paper's meta-training lowers l_p.

Writes ``docs/mlhf_init_damping.md`` (and prints it)::

    python docs/mlhf_init_damping.py [--seeds 0,1,2,3,4,5] [--iterations 100] [--jobs 2]
                                     [--reuse]

(``--reuse`` keeps every run whose log is complete and runs only the others.)

Issue 5, point 3 asks that meta-training MLHF with the paper's objective lower
both meta-losses, l_p (RNN_p's) and l_s (RNN_s's).  Both depend on the damping s
that RNN_s gives, in opposite ways:

* l_p = (1/T) Σ_t −⟨d, g⟩ / sqrt(⟨d, A d⟩) with A = G + diag(s) is bounded below
  by −sqrt(gᵀA⁻¹g) (Cauchy–Schwarz, equality at d ∝ A⁻¹g): the larger s, the
  higher that floor, whatever RNN_p does;
* l_s (the loss change over each step) has a best damping, about 1.5 on
  cnn-small's 10-step unrolls (``hfmeta/meta/shipped/README.md``).

The untrained RNN_s starts at s ≈ softplus(0) ≈ 0.69, below that best value, so
l_s raises s and l_p rises with it (the shipped paper-objective file,
``hfmeta/meta/shipped/mlhf_paper.h5``).  This script
meta-trains MLHF with the paper's objective and that file's settings
(``-b 128``, ``meta_lr=0.01``) from the default start and from RNN_s output
biases that start s at 2 and 4 (``--opt init_damping=S``, the rest of the
initialisation unchanged), on several seeds, and reads ``MetaTrainer.evaluate``
(l_p, l_s at fixed recorded states of 8 held-out unrolls, every 20
meta-iterations) from each log.  Two more runs from s = 2 split the change:
``train=s`` (RNN_p kept at its initialisation) and ``train=p`` (RNN_s kept).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

from mlhf_damping import publish, run_hfmeta
from mlhf_es import bias_dampings
from mlhf_restart import ROOT, seed_list

DEFAULT_OUT = os.path.join(ROOT, "docs", "mlhf_init_damping.md")
EVAL_EVERY = 20


def configurations(seeds):
    """``[(name, init_damping or None, train, seed)]``."""
    runs = [(f"s_0 = {s0 or 0.69}", s0, "sp", seed) for s0 in (None, 2, 4) for seed in seeds]
    return runs + [("s_0 = 2, RNN_s only", 2, "s", seeds[0]),
                   ("s_0 = 2, RNN_p only", 2, "p", seeds[0])]


def meta_train_command(init_damping, train, seed, iterations, out):
    cmd = ["hfmeta", "-q", "--seed", str(seed), "meta-train", "-m", "mlhf", "--model",
           "cnn-small", "-b", "128", "-n", str(iterations), "--opt", "meta_lr=0.01",
           "--eval-every", str(EVAL_EVERY), "--out", out]
    if init_damping is not None:
        cmd[-2:-2] = ["--opt", f"init_damping={init_damping}"]
    if train != "sp":
        cmd[-2:-2] = ["--opt", f"train={train}"]
    return cmd


def read_log(path):
    """``[(iteration, evaluation)]`` of the held-out evaluations in a meta-training log,
    the one before training as iteration 0; and the wall time of the iterations."""
    rows = [json.loads(line) for line in open(path)]
    final = next(r["evaluation"] for r in rows if "evaluation" in r)
    points = [(r["iteration"], r["validation"]) for r in rows if "validation" in r]
    if not points or points[0][0] != 0:      # logs written before the first line was logged
        points.insert(0, (0, final["before"]))
    wall = sum(r["wall"] for r in rows if "wall" in r)
    return points, final, wall


def complete(log):
    """Whether a meta-training log ends with its before/after evaluation."""
    return os.path.exists(log) and any('"evaluation"' in line for line in open(log))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,5")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "init_damping"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs in --runs whose logs are complete; run the rest")
    args = parser.parse_args()
    t0 = time.perf_counter()
    configs = configurations(seed_list(args.seeds))

    def launch(config):
        name, s0, train, seed = config
        folder = os.path.join(args.runs, f"{s0 or 'default'}_{train}_{seed}")
        out = os.path.relpath(os.path.join(folder, "meta.h5"), ROOT)
        if args.reuse and complete(os.path.join(folder, "meta.jsonl")):
            return out
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        run_hfmeta(meta_train_command(s0, train, seed, args.iterations, out), check=True)
        return out

    with ThreadPoolExecutor(args.jobs) as pool:
        files = list(pool.map(launch, configs))

    example = " ".join(meta_train_command(2, "sp", "SEED", args.iterations, "FILE"))
    rows, walls, both_lower = [], [], {}
    for (name, s0, train, seed), path in zip(configs, files):
        points, final, wall = read_log(os.path.splitext(os.path.join(ROOT, path))[0] + ".jsonl")
        points.append((args.iterations, final["after"]))
        points = sorted(dict(points).items())
        l_p = " → ".join(f"{e['l_p']:.4f}" for _, e in points)
        l_s = " → ".join(f"{e['l_s']:.4f}" for _, e in points)
        both = final["after"]["l_p"] < final["before"]["l_p"] and \
            final["after"]["l_s"] < final["before"]["l_s"]
        if train == "sp":
            both_lower.setdefault(name, []).append(both)
        damping = " / ".join(f"{v:.2f}" for v in bias_dampings(path).values())
        rows.append(f"| {name} | {seed} | {l_p} | {l_s} | {'yes' if both else 'no'} | "
                    f"{damping} | {wall:.0f} s |")
        walls.append(wall)
    made = (f"with `--reuse` (earlier runs kept); all runs' meta-iterations took "
            f"{sum(walls) / 60:.1f} min (held-out evaluations not counted)"
            if args.reuse else
            f"in {(time.perf_counter() - t0) / 60:.1f} min ({args.jobs} processes, one BLAS "
            f"thread each)")
    summary = "; ".join(f"{name}: {sum(v)} of {len(v)}" for name, v in both_lower.items())
    lines = ["# MLHF meta-training (paper objective) from different initial dampings", "",
             f"Made by `python docs/mlhf_init_damping.py --seeds {args.seeds} --iterations "
             f"{args.iterations}` {made}; see the script's docstring for why.", "",
             f"Each run: `{example}` (without `init_damping` for the default start s ≈ 0.69; "
             f"with `--opt train=s` or `train=p` for the last two rows). l_p and l_s: "
             f"`MetaTrainer.evaluate` on 8 fixed held-out unrolls (T = 10, from fresh nets "
             f"and nets 30 steps into training; the same recorded states for every row and "
             f"iteration, so a change is the meta-nets' doing). s at the end: "
             f"s_min + softplus(out.bias) of RNN_s per kind (conv.weight, conv.bias, "
             f"fc.weight, fc.bias), the value it gives when its LSTM output is zero.", "",
             f"Runs (both meta-nets trained) that end with l_p and l_s both below their "
             f"start: {summary}.", "",
             "| start | seed | l_p: " + " → ".join(str(i) for i in
                                                  range(0, args.iterations + 1, EVAL_EVERY))
             + " | l_s: same iterations | both lower at the end | s at the end | "
             "meta-iterations' wall |",
             "|---|---|---|---|---|---|---|"] + rows
    publish(args.out, lines)


if __name__ == "__main__":
    main()
