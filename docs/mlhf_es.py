"""Does MLHF meta-trained by ES on whole runs beat the untrained MLHF?  Whole runs, per seed.

Writes ``docs/mlhf_es.md`` (and prints it)::

    python docs/mlhf_es.py [--meta hfmeta/meta/shipped/mlhf.h5 ...] [--target-seeds 15-24]
                           [--meta-seeds 113-122] [--jobs 2]

The meta-parameter files were meta-trained with ``--opt objective=es``
(:mod:`hfmeta.meta.mlhf_es`: evolution strategies on whole runs of the meta
split, scored by their mean log-loss, a blow-up scored as a loss of 10 for
the rest of its run); each file's command is in
``hfmeta/meta/shipped/README.md``.  They start from the untrained meta-nets,
so the untrained MLHF (s ≈ 0.69 everywhere, lr = 1) is the baseline.  For
each file the untrained meta-nets with each kind's damping held at the file's
bias value, s_min + softplus(out.bias) (what RNN_s gives when its LSTM output
is zero), tell whether the file is more than four constant dampings.

Each MLHF runs ``hfmeta train -o mlhf --split S -b 128 --epochs E`` from a
fresh net on the held-out target split (10 epochs, 120 steps, the issue's
test) and on the meta-training split (6 epochs, 108 steps), on seeds that no
earlier measurement used (target 15–24, meta 113–122: the earlier docs used
0–14 and 101–112).  Reported as in ``docs/mlhf_restart.md``.  Beside them,
Adam tuned per target seed over its 27-point grid (``hfmeta compare adam``,
the best grid point of each seed: tuned on the very runs it is scored on).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mlhf_damping import run_hfmeta
from mlhf_restart import (ROOT, comparison_parser, constant_file, loss_text, require_files,
                          run_variants, seed_list, write_report)

from hfmeta.meta.mlhf import MLHFNets

DEFAULT_OUT = os.path.join(ROOT, "docs", "mlhf_es.md")


def bias_dampings(path, kinds=("conv.weight", "conv.bias", "fc.weight", "fc.bias")):
    """``{kind: s_min + softplus(out.bias)}`` of RNN_s in the file at ``path``."""
    nets, theta, _, _ = MLHFNets.load(os.path.join(ROOT, path))
    theta_s = nets.split(theta)[0]
    out = {}
    for kind in kinds:
        bias = float(nets.rnn_s.lstms[kind].views(theta_s[nets.rnn_s.theta_slices[kind]])
                     ["out.bias"][0])
        out[kind] = round(nets.s_min + float(np.logaddexp(0.0, bias)), 4)
    return out


def adam_command(seed, out):
    return ["hfmeta", "-q", "--seed", str(seed), "compare", "adam", "--model", "cnn-small",
            "--data", "mnist5k", "--split", "target", "-b", "128", "--epochs", "10",
            "--out", out]


def tuned_adam(seeds, runs, jobs):
    """``{seed: (last-epoch training loss, grid point)}`` of Adam tuned on each seed."""
    def launch(seed):
        out = os.path.join(runs, "adam", str(seed))
        run_hfmeta(adam_command(seed, out), check=True)
        best = json.load(open(os.path.join(out, "compare.json")))[0]
        return best["train_loss"], best["hparams"]

    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(seeds, pool.map(launch, seeds)))


def adam_lines(adam, variants, results):
    """The tuned-Adam table and each target-split MLHF's loss ÷ Adam's, per seed."""
    seeds = list(adam)
    losses = np.array([adam[s][0] for s in seeds])
    lines = ["## Adam, tuned per target seed", "",
             "Command per seed: `" + " ".join(adam_command("SEED", "RUN_DIR")) + "` (27 "
             "grid points: lr 0.1, 0.01, 0.001 × beta1, beta2 0.9, 0.99, 0.999; the best "
             "last-epoch training loss of each seed kept).", "",
             f"Mean {loss_text(losses.mean())}, median {loss_text(np.median(losses))}; per "
             "seed: " + ", ".join(f"{s}: {loss_text(adam[s][0])} "
                                  f"({', '.join(f'{k}={v:g}' for k, v in adam[s][1].items())})"
                                  for s in seeds) + ".", "",
             "| MLHF (target split) | MLHF loss ÷ tuned Adam's, mean over seeds (min, max) |",
             "|---|---|"]
    for i, (name, _, _) in enumerate(variants):
        runs = [results[(i, "target", s)][0] for s in seeds]
        if any(r is None for r in runs):
            lines.append(f"| {name} | – (a run diverged) |")
            continue
        ratio = np.array([r["loss"] for r in runs]) / losses
        lines.append(f"| {name} | {ratio.mean():.3f} ({ratio.min():.3f}, {ratio.max():.3f}) |")
    return lines + [""]


def main():
    parser = comparison_parser(__doc__.splitlines()[0], "15-24", "113-122", "es", DEFAULT_OUT)
    parser.add_argument("--meta", action="append", default=None,
                        help="an ES-meta-trained file (repeatable; default the shipped "
                             "hfmeta/meta/shipped/mlhf.h5, docs/mlhf_es_seed1.h5 and "
                             "docs/mlhf_es_all.h5)")
    args = parser.parse_args()
    files = args.meta or ["hfmeta/meta/shipped/mlhf.h5", "docs/mlhf_es_seed1.h5",
                          "docs/mlhf_es_all.h5"]
    require_files(parser, files)
    seeds = {"target": seed_list(args.target_seeds), "meta": seed_list(args.meta_seeds)}
    variants = [("untrained", None, [])]
    for path in files:
        dampings = bias_dampings(path)
        variants += [(f"ES: `{path}`", path, []),
                     (f"untrained, dampings held at {dampings}", constant_file(dampings, args.runs),
                      [])]
    t0 = time.perf_counter()
    results = run_variants(variants, seeds, args.runs, args.jobs)
    adam = tuned_adam(seeds["target"], args.runs, args.jobs)
    write_report(args.out, "MLHF meta-trained by evolution strategies on whole runs "
                 "(cnn-small on mnist5k)",
                 f"python docs/mlhf_es.py {' '.join('--meta ' + f for f in files)} "
                 f"--target-seeds {args.target_seeds} --meta-seeds {args.meta_seeds}",
                 t0, args.jobs, [], "", variants, seeds, results,
                 adam_lines(adam, variants, results))


if __name__ == "__main__":
    main()
