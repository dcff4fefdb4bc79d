"""Can the horizon-log MLHF's gain be made safe (restart, a loss input)?  Whole runs, per seed.

Writes ``docs/mlhf_restart.md`` (and prints it)::

    python docs/mlhf_restart.py [--target-seeds 5-14] [--meta-seeds 103-112] [--jobs 2]

Background (``hfmeta/meta/shipped/README.md``): meta-trained with the
horizon-log objective, RNN_s lowers conv.weight's damping to ~0.23, which
trains the held-out split 2.5x lower than the untrained MLHF but blows up on
fresh nets of the meta split.  The blow-up is the warm start x0 = d_prev:
in directions of small curvature four CG iterations barely shrink the
previous solution, so each step repeats much of the last one (momentum),
the more so the smaller the damping, and once a step overshoots the loss
grows by orders of magnitude per step.  ``restart=2`` starts PCG cold when
the mini-batch loss more than doubles (:func:`hfmeta.meta.mlhf.restart_due`,
ours, after O'Donoghue & Candès 2015).

The MLHFs compared (all: two-layer RNNs of 4 units, n = 4, lr = 1 at b = 128):

* ``untrained`` -- fresh meta-nets (s ≈ 0.69 everywhere), with and without
  restart;
* ``horizon-log`` -- ``docs/mlhf_horizon_log.h5`` (meta-trained without
  restarts), with and without restart at inference;
* ``horizon-log, restart in meta-training`` -- ``docs/mlhf_horizon_log_restart.h5``,
  meta-trained with ``--opt restart=2`` (its unrolls restart too); the file
  makes restart = 2 the optimizer's default;
* ``horizon-log, RNN_s sees the loss ratio`` -- ``docs/mlhf_horizon_log_loss_input.h5``,
  meta-trained with ``--opt loss_input=true``: RNN_s's fourth input is
  tanh(log(l_t / l_{t−1})), so it could learn to raise the damping after a
  loss jump as Levenberg–Marquardt does; and the same with
  ``--opt restart=2`` too (``docs/mlhf_horizon_log_loss_input_restart.h5``);
* ``untrained, conv.weight's damping held at s`` -- what any learned
  damping of the conv weights could give: the untrained meta-nets with
  conv.weight's RNN_s giving the constant s (:meth:`MLHFNets.constant_damping`;
  the horizon-log RNN_s gives it 0.23, the untrained one 0.69).

Each runs ``hfmeta train -o mlhf --split S -b 128 --epochs E`` from a fresh
net on the held-out target split (10 epochs) and on the meta-training split
(6 epochs, about as many samples), on seeds that no earlier measurement of
these files used.  Reported: runs that finished (a run whose loss turns
non-finite stops with an error), mean and median of the last epoch's mean
training loss, on how many seeds it is below the untrained MLHF's (paper
warm start), and the mean number of restarts per run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mlhf_damping import ROOT, loss_text, publish, run_hfmeta, run_summary, train_command

from hfmeta.meta.mlhf import MLHFNets

DEFAULT_OUT = os.path.join(ROOT, "docs", "mlhf_restart.md")
HORIZON_LOG = "docs/mlhf_horizon_log.h5"
HORIZON_LOG_RESTART = "docs/mlhf_horizon_log_restart.h5"
HORIZON_LOG_LOSS = "docs/mlhf_horizon_log_loss_input.h5"
HORIZON_LOG_LOSS_RESTART = "docs/mlhf_horizon_log_loss_input_restart.h5"
CONV_DAMPING = (0.3, 0.4, 0.5)
# (name, --meta file, or None for the untrained meta-nets, or {kind: s} for the
# untrained ones with that kind's damping held at s; extra --hp settings)
VARIANTS = [
    ("untrained", None, []),
    ("untrained, restart 2", None, ["restart=2"]),
    ("horizon-log", HORIZON_LOG, []),
    ("horizon-log, restart 2", HORIZON_LOG, ["restart=2"]),
    ("horizon-log, restart in meta-training (2)", HORIZON_LOG_RESTART, []),
    ("horizon-log, RNN_s sees the loss ratio", HORIZON_LOG_LOSS, []),
    ("horizon-log, loss ratio and restart in meta-training (2)", HORIZON_LOG_LOSS_RESTART, []),
] + [(f"untrained, conv.weight's damping held at {s:g}", {"conv.weight": s}, [])
     for s in CONV_DAMPING]
SPLITS = {"target": 10, "meta": 6}          # split: epochs


def seed_list(text):
    """``"5-14"`` or ``"5,6,7"`` -> a list of ints."""
    if "-" in text:
        first, last = (int(x) for x in text.split("-"))
        return list(range(first, last + 1))
    return [int(x) for x in text.split(",")]


def command(meta, hps, seed, split, out):
    """The ``hfmeta train`` command of one run."""
    cmd = train_command(meta or "", seed, SPLITS[split], out, split)
    if meta is None:                                     # untrained: no --meta file
        i = cmd.index("--meta")
        cmd[i:i + 2] = ["--hp", "untrained=true"]
    for hp in hps:
        cmd += ["--hp", hp]
    return cmd


def constant_file(damping, runs):
    """A meta-parameter file: the untrained MLHF (b_mt = 128, so lr = 1 at b = 128)
    with RNN_s giving the constant ``damping[kind]`` on those kinds; its path."""
    nets = MLHFNets(b_mt=128)
    path = os.path.join(runs, "meta", "_".join(f"{k}={s:g}" for k, s in damping.items()) + ".h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nets.save(path, nets.constant_damping(nets.init(0), damping),
              extra_config={"model": "cnn-small", "variant": f"constant damping {damping}"})
    return os.path.relpath(path, ROOT)


def restarts(run_dir):
    """Number of restarted steps of a run (finished or not)."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return sum(r.get("restarted", 0) for r in rows if r["kind"] == "step")


def run_variants(variants, seeds, runs, jobs):
    """Run every variant ``(name, meta file or None, hps)`` on every split and seed,
    ``jobs`` at a time; ``{(variant index, split, seed): (run_summary, restarts)}``."""
    tasks = [(i, split, seed) for i in range(len(variants)) for split in SPLITS
             for seed in seeds[split]]

    def launch(task):
        i, split, seed = task
        _, meta, hps = variants[i]
        out = os.path.join(runs, f"variant{i}", split, str(seed))
        shutil.rmtree(out, ignore_errors=True)          # a fresh run, not a resumed one
        run_hfmeta(command(meta, hps, seed, split, os.path.relpath(out, ROOT)))
        return run_summary(out), restarts(out)

    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(tasks, pool.map(launch, tasks)))


def report(variants, seeds, results):
    """Markdown tables, one per split: finished, mean/median loss, seeds below the
    first variant (the baseline), restarts, per seed."""
    lines = []
    for split, epochs in SPLITS.items():
        base = {seed: results[(0, split, seed)][0] for seed in seeds[split]}
        lines += [f"## {split} split, {epochs} epochs, seeds {', '.join(map(str, seeds[split]))}",
                  "", "| MLHF | finished | mean loss | median loss | below untrained | "
                  "restarts per run | per seed |", "|---|---|---|---|---|---|---|"]
        for i, (name, _, _) in enumerate(variants):
            runs = {seed: results[(i, split, seed)] for seed in seeds[split]}
            done = {seed: r[0]["loss"] for seed, r in runs.items() if r[0] is not None}
            wins = sum(1 for seed, loss in done.items()
                       if base[seed] is not None and loss < base[seed]["loss"])
            values = list(done.values())
            per_seed = ", ".join(f"{seed}: {loss_text(done[seed])}" if seed in done
                                 else f"{seed}: diverged" for seed in seeds[split])
            lines.append(
                f"| {name} | {len(done)}/{len(runs)} | "
                f"{loss_text(np.mean(values)) if values else '–'} | "
                f"{loss_text(np.median(values)) if values else '–'} | "
                f"{wins if i else '–'} | {np.mean([r[1] for r in runs.values()]):.1f} | "
                f"{per_seed} |")
        lines.append("")
    return lines


def write_report(path, title, made_by, t0, jobs, hps, hp_note, variants, seeds, results,
                 extra=()):
    """Write (and print) the markdown of :func:`report` under a header that says how
    it was made (``made_by``, the minutes since ``t0``) and what each run was; then
    the lines ``extra``."""
    example = shlex.join(command("FILE", hps, "SEED", "target", "RUN_DIR"))
    lines = [f"# {title}", "",
             f"Made by `{made_by}` in {(time.perf_counter() - t0) / 60:.1f} min ({jobs} "
             f"processes, one BLAS thread each); see the script's docstring for what is "
             f"compared.", "",
             f"Each run: `{example}`{' ' + hp_note if hp_note else ''}. Loss: mean training "
             f"loss of the last epoch. Below untrained: seeds where the run finished below "
             f"the untrained MLHF's (paper warm start) on the same seed.", ""]
    publish(path, lines + report(variants, seeds, results) + list(extra), end="")


def comparison_parser(description, target_seeds, meta_seeds, runs, out):
    """The command line of a whole-run comparison: seeds per split, jobs, folders."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target-seeds", default=target_seeds)
    parser.add_argument("--meta-seeds", default=meta_seeds)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", runs))
    parser.add_argument("--out", default=out)
    return parser


def require_files(parser, paths):
    """A one-line command-line error for the first of ``paths`` that is missing."""
    for path in paths:
        if not os.path.exists(os.path.join(ROOT, path)):
            parser.error(f"{path} is missing; see hfmeta/meta/shipped/README.md for its command")


def main():
    parser = comparison_parser(__doc__.splitlines()[0], "5-14", "103-112", "restart", DEFAULT_OUT)
    args = parser.parse_args()
    seeds = {"target": seed_list(args.target_seeds), "meta": seed_list(args.meta_seeds)}
    require_files(parser, [meta for _, meta, _ in VARIANTS if isinstance(meta, str)])
    t0 = time.perf_counter()
    variants = [(name, constant_file(meta, args.runs) if isinstance(meta, dict) else meta, hps)
                for name, meta, hps in VARIANTS]
    results = run_variants(variants, seeds, args.runs, args.jobs)
    write_report(args.out, "The horizon-log MLHF on fresh seeds: adaptive restart, a loss "
                 "input (cnn-small on mnist5k)",
                 f"python docs/mlhf_restart.py --target-seeds {args.target_seeds} "
                 f"--meta-seeds {args.meta_seeds}", t0, args.jobs, ["HP"],
                 "(HP: the variant's `--hp`, if any)", VARIANTS, seeds, results)


if __name__ == "__main__":
    main()
