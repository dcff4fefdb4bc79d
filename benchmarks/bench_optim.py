"""Per-step cost of every optimizer, as a ratio to one SGD step, in one run.

    python benchmarks/bench_optim.py                    # convnet, batch 128, CPU, float32
    python benchmarks/bench_optim.py --steps 5 --model cnn-small --in-shape 1,28,28

Each optimizer runs ``--steps`` steps (after one warm-up step) on one fixed
random batch from the same initial weights, interleaved round-robin so that
load on a shared machine affects all alike (for steadier numbers there, set
``OPENBLAS_NUM_THREADS=1``); the table gives the median
seconds per step, the ratio to SGD's median, and the mean of the
optimizer's own work counters (CG iterations, line-search tries).  K-FAC's
inverse refresh (every ``inverse_every`` steps) is timed on its own row,
``kfac (refresh)``, and is excluded from the ``kfac`` row.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from hfmeta import backend, models
from hfmeta.optim import OPTIMIZERS, get_optimizer
from hfmeta.problem import Problem

SETTINGS = {            # stable settings (the Table 1 fixed values where they exist)
    "sgd": {"lr": 0.01},
    "rmsprop": {"lr": 1e-3},
    "adam": {"lr": 1e-3},
    "hf-fixed": {"lr": 0.1, "damping": 1.0},
    "hf-lm": {"lr": 0.1, "damping": 1.0},
    "martens-hf": {"damping": 1.0, "cg_max_iters": 50},   # 250 in the recipe; cost ∝ iterations
    "kfac": {"lr": 0.01, "damping": 0.1, "inverse_every": 20},
    "sou": {"lr": 0.01, "mu": 1.0},
}
COUNTERS = ("cg_iters", "line_search_tries")


def sync(x):
    backend.to_float(x.sum())  # a host sync, so GPU timings are complete


def run_interleaved(names, model, w0, batch, steps):
    """Round-robin: each round times one step of every optimizer, so a change in
    machine load hits all of them alike.  Round 0 is the warm-up."""
    runs = []
    for name in names:
        opt = get_optimizer(name, **SETTINGS[name])
        runs.append({"name": name, "opt": opt, "problem": Problem(model), "w": w0.copy(),
                     "state": opt.init(w0), "times": [], "refresh": [],
                     "counters": {c: [] for c in COUNTERS}})
    for k in range(steps + 1):
        for run in runs:
            opt = run["opt"]
            t0 = time.perf_counter()
            run["w"], run["state"], info = opt.step(run["problem"], run["w"], run["state"], batch)
            sync(run["w"])
            dt = time.perf_counter() - t0
            if opt.name == "kfac" and (run["state"]["t"] - 1) % opt.inverse_every == 0:
                run["refresh"].append(dt)
            elif k > 0:
                run["times"].append(dt)
                for c in COUNTERS:
                    if c in info:
                        run["counters"][c].append(info[c])
    rows = []
    for run in runs:
        rows.append((run["name"], statistics.median(run["times"]), run["counters"]))
        if run["refresh"]:
            rows.append((run["name"] + " (refresh)", statistics.median(run["refresh"]), {}))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--in-shape", default="3,32,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--only", default=",".join(OPTIMIZERS))
    args = ap.parse_args(argv)

    in_shape = tuple(int(s) for s in args.in_shape.split(","))
    model = models.build(args.model, in_shape=in_shape, classes=10, dtype=args.dtype,
                         device=args.device)
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.standard_normal((args.batch,) + in_shape).astype(args.dtype),
                          args.device)
    y = backend.to_device(rng.integers(0, 10, args.batch), args.device)
    w0 = model.init(seed=0)
    print(f"{args.model} {in_shape} ({model.num_params} parameters), batch {args.batch}, "
          f"{args.device}, {args.dtype}, median of {args.steps} steps after 1 warm-up")

    rows = run_interleaved(args.only.split(","), model, w0, (x, y), args.steps)
    base = next(t for n, t, _ in rows if n == "sgd") if any(n == "sgd" for n, *_ in rows) else None
    print(f"{'optimizer':18s} {'s/step':>9s} {'× SGD':>8s}  work")
    for name, t, counters in rows:
        ratio = f"{t / base:8.1f}" if base else f"{'-':>8s}"
        work = ", ".join(f"{c} {np.mean(v):.1f}" for c, v in counters.items() if v)
        print(f"{name:18s} {t:9.3f} {ratio}  {work}")


if __name__ == "__main__":
    main()
