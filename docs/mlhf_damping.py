"""Why the meta-trained MLHF loses to its untrained meta-nets over a whole run: the damping.

Writes ``docs/mlhf_damping.md`` (and prints it)::

    python docs/mlhf_damping.py [--meta FILE] [--seeds 0,1,2,3,4] [--jobs 2] [--swap KIND,...]

Every MLHF below has the shipped files' configuration (RNN_s and RNN_p of
two layers of 4 units, n = 4, tanh inputs, b_mt = 128) and differs only in
its meta-parameters:

* ``untrained`` -- ``MLHFNets.init(0)``: s ≈ softplus(0) ≈ 0.69 everywhere;
* ``meta-trained`` -- the ``--meta`` file (default: the shipped
  ``mlhf_paper.h5``, meta-trained with the paper's objective);
* the two mixtures -- meta-trained RNN_s with the initial RNN_p and the
  other way round (which of the two nets makes the difference);
* ``constant s`` -- the initial RNN_p and an RNN_s whose output layer is
  zeroed, with the output bias set so that softplus(bias) + s_min = s;
* with ``--swap KIND``, per parameter kind (RNN_s has one set of
  meta-parameters per kind): the meta-trained MLHF with that kind's RNN_s
  put back to its initial values, and the untrained one with only that
  kind's RNN_s meta-trained (which kind's damping makes the difference).

1. **Over the meta-objective's horizon** (:meth:`MetaTrainer.evaluate`,
   ``--starts`` fresh nets of the meta split and the same nets after 30 steps
   of the untrained MLHF): l_s (the paper's softmax-weighted one-step loss
   changes, × 10) at fixed recorded states, and the training loss after the
   optimizer's own T = 10 steps.
2. **Over a whole run**: ``hfmeta train -o mlhf --split S -b 128 --epochs E``
   (S: ``--split``, the held-out target split by default) from a fresh net,
   per seed; the mean training loss of the last
   epoch, and RNN_s's mean damping at the first step, the end of the first
   epoch and the last step (the ``damping_mean`` column of ``metrics.jsonl``),
   and per parameter kind at the last step (``damping_mean.<kind>``).

If the damping that wins in 1 is larger than the one that wins in 2, the
meta-objective has a short-horizon bias (Wu, Ren, Liao & Grosse, ICLR 2018):
it learns what is best for 10 steps, not for a run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})   # before NumPy
import numpy as np  # noqa: E402

from hfmeta.data import open_dataset
from hfmeta.meta.mlhf import MLHFNets
from hfmeta.meta.mlhf_train import MetaTrainer
from hfmeta.meta.registry import shipped_path
from hfmeta.models import build
from hfmeta.problem import Problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTANT_S = (0.35, 0.5, 1.0, 1.5, 2.2)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlhf_damping.md")


def variants(nets, initial, trained, swap=()):
    """``{name: theta}`` of the optimizers compared (module docstring)."""
    n_s = nets.size_s
    out = {"untrained": initial, "meta-trained": trained,
           "meta-trained RNN_s, initial RNN_p": np.concatenate([trained[:n_s], initial[n_s:]]),
           "initial RNN_s, meta-trained RNN_p": np.concatenate([initial[:n_s], trained[n_s:]])}
    for kind in swap:
        rows = nets.rnn_s.theta_slices[kind]          # RNN_s's meta-parameters of that kind
        out[f"meta-trained, initial RNN_s on {kind}"] = trained.copy()
        out[f"meta-trained, initial RNN_s on {kind}"][rows] = initial[rows]
        out[f"untrained, meta-trained RNN_s on {kind}"] = initial.copy()
        out[f"untrained, meta-trained RNN_s on {kind}"][rows] = trained[rows]
    for s in CONSTANT_S:
        out[f"constant s = {s:g}"] = nets.constant_damping(initial, s)
    return out


def train_command(meta, seed, epochs, out, split="target"):
    return ["hfmeta", "-q", "--seed", str(seed), "train", "-o", "mlhf", "--meta", meta,
            "--split", split, "-b", "128", "--epochs", f"{epochs:g}", "--out", out]


def run_hfmeta(cmd, check=False):
    """Run an ``hfmeta`` command line (a list) from the repository root, output
    discarded; it inherits the one-BLAS-thread environment set at the top."""
    subprocess.run(cmd, cwd=ROOT, check=check, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def publish(path, lines, end="\n"):
    """Write the markdown ``lines`` to ``path`` and print them."""
    text = "\n".join(lines) + end
    with open(path, "w") as f:
        f.write(text)
    print(text)


def loss_text(loss):
    """5 decimals; a blown-up (but finite) loss in scientific notation."""
    return f"{loss:.5f}" if loss < 1 else f"{loss:.3g}"


def run_summary(run_dir):
    """Last-epoch mean training loss and damping at step 1, end of epoch 1, last step
    (None when the run did not finish, e.g. diverged)."""
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
        return None
    summary = json.load(open(summary_path))
    steps = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [x for x in steps if x["kind"] == "step"]
    epochs = json.load(open(os.path.join(run_dir, "config.json")))["epochs"]
    per_epoch = min(len(steps), round(summary["steps"] / epochs))
    damping = [x["damping_mean"] for x in steps]
    by_kind = {key[len("damping_mean."):]: value for key, value in steps[-1].items()
               if key.startswith("damping_mean.")}
    return {"loss": float(np.mean([x["loss"] for x in steps[-per_epoch:]])),
            "damping": (damping[0], damping[per_epoch - 1], damping[-1]), "by_kind": by_kind}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", default=shipped_path("mlhf_paper"))
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--starts", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--split", default="target", choices=("target", "meta", "train"),
                        help="split of the whole runs (2.: the issue's held-out 2/5 by default)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "damping"))
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--swap", default="", help="comma-separated parameter kinds (docstring)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    nets, trained, config, _ = MLHFNets.load(args.meta, np, np.float32)
    ds = open_dataset(args.data)
    model = build(args.model, ds.image_shape, ds.classes, dtype="float32")
    problem = Problem(model)
    batches = ds.batches("meta", nets.b_mt, seed=0, dtype="float32", augment=ds.default_augment)
    trainer = MetaTrainer(problem, batches, T=10, n=nets.n, hidden=nets.hidden,
                          use_rnn_p=nets.use_rnn_p, inputs=nets.inputs, seed=0)
    swap = [k for k in args.swap.split(",") if k]
    unknown = [k for k in swap if k not in trainer.nets.kinds]
    if unknown:
        parser.error(f"--swap: unknown kind(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(trainer.nets.kinds)}")
    thetas = variants(trainer.nets, trainer.theta, trained, swap)

    # meta-parameter files for hfmeta train
    meta_dir = os.path.join(args.runs, "meta")
    os.makedirs(meta_dir, exist_ok=True)
    files = {}
    for i, (name, theta) in enumerate(thetas.items()):
        files[name] = os.path.join(meta_dir, f"variant{i}.h5")
        trainer.nets.save(files[name], theta, extra_config={
            "model": config.get("model", args.model), "trained_kinds": model.layout.kinds,
            "variant": name})

    # 2. whole runs, in parallel subprocesses (started first: they take longest)
    jobs = [(name, seed, os.path.join(args.runs, f"variant{i}", str(seed)))
            for i, name in enumerate(thetas) for seed in seeds]

    def launch(job):
        name, seed, out = job
        shutil.rmtree(out, ignore_errors=True)          # a fresh run, not a resumed one
        cmd = train_command(os.path.relpath(files[name], ROOT), seed, args.epochs,
                            os.path.relpath(out, ROOT), args.split)
        run_hfmeta(cmd)
        return run_summary(out)

    with ThreadPoolExecutor(max(1, args.jobs - 1)) as pool:
        pending = pool.map(launch, jobs)
        # 1. the meta-objective's horizon, in this process meanwhile
        # (k outer: the trainer records one set of held-out windows at a time)
        horizon = {name: {} for name in thetas}
        for k in (0, 30):
            for name, theta in thetas.items():
                horizon[name][k] = trainer.evaluate(theta, starts=args.starts, warm=(k,))
        runs = dict(zip([(name, seed) for name, seed, _ in jobs], pending))

    example = shlex.join(train_command("FILE", "SEED", args.epochs, "RUN_DIR", args.split))
    lines = [f"# Damping over 10 steps and over a run ({args.model} on {args.data})", "",
             f"Made by `python docs/mlhf_damping.py --meta {os.path.relpath(args.meta, ROOT)} "
             f"--seeds {args.seeds}"
             + (f" --split {args.split}" if args.split != "target" else "")
             + (f" --epochs {args.epochs:g}" if args.epochs != 10 else "")
             + (f" --out {os.path.relpath(args.out, ROOT)}" if args.out != DEFAULT_OUT else "")
             + (f" --swap {args.swap}" if swap else "")
             + f"` in {(time.perf_counter() - t0) / 60:.1f} min "
             f"({args.jobs} processes, one BLAS thread each); see the script's docstring for "
             f"what is measured.", "",
             "## 1. Over the meta-objective's horizon", "",
             f"`MetaTrainer.evaluate` on {args.starts} held-out windows of T = 10 steps from "
             f"fresh nets (k = 0) and from the same nets 30 steps into training (k = 30): "
             f"l_s at fixed recorded states (lower is better), and the training loss after "
             f"each optimizer's own 10 steps.", "",
             "| MLHF | l_s, k = 0 | loss after 10 steps, k = 0 | l_s, k = 30 | "
             "loss after 10 steps, k = 30 |", "|---|---|---|---|---|"]
    for name, ev in horizon.items():
        lines.append(f"| {name} | {ev[0]['l_s']:+.4f} | {ev[0]['loss_end']:.4f} | "
                     f"{ev[30]['l_s']:+.4f} | {ev[30]['loss_end']:.4f} |")
    lines += ["", f"## 2. Over a run of {args.epochs:g} epochs", "",
              f"`{example}` ({args.split} split, from a fresh net); mean training loss of the last "
              f"epoch (mean over the seeds that finished; a run that diverged stops with an "
              f"error and is counted as such), and the mean damping of RNN_s at step 1, at "
              f"the end of epoch 1 and at the last step (seed {seeds[0]}).", "",
              "| MLHF | seeds finished | last-epoch loss | per seed | damping: step 1 → epoch 1 → last |",
              "|---|---|---|---|---|"]
    for name in thetas:
        done = {s: runs[(name, s)] for s in seeds if runs[(name, s)] is not None}
        per_seed = ", ".join(f"{s}: {loss_text(done[s]['loss'])}" if s in done else f"{s}: diverged"
                             for s in seeds)
        first = done.get(seeds[0])
        damping = " → ".join(f"{x:.2f}" for x in first["damping"]) if first else "–"
        mean = loss_text(np.mean([r['loss'] for r in done.values()])) if done else "–"
        lines.append(f"| {name} | {len(done)}/{len(seeds)} | {mean} | {per_seed} | {damping} |")
    kinds = model.layout.kinds
    lines += ["", f"RNN_s's mean damping per parameter kind at the last step of each run (seed "
              f"{seeds[0]}; the overall mean above is nearly fc.weight's, which has most "
              f"coordinates):", "", "| MLHF | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for name in thetas:
        first = runs[(name, seeds[0])]
        cells = [f"{first['by_kind'][k]:.2f}" if first else "–" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    publish(args.out, lines)


if __name__ == "__main__":
    main()
