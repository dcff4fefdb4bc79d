"""Summarise the GPU run of Figure 4 (the RNN_p ablation) on convnet: writes docs/fig4_gpu.md.

::

    OUT=fig4-gpu bash docs/fig4_gpu.sh 390     # on a GPU machine: four meta-training logs
    python docs/fig4_gpu.py [--logs docs/fig4_gpu] [--out docs/fig4_gpu.md]

Reads ``config1``, ``config2``, ``config4`` and ``config4p`` ``.jsonl`` from ``--logs``
(see docs/fig4_gpu.sh for what each is).  The held-out evaluation before meta-training
is the log's iteration-0 'validation' line; logs written before ``meta-train`` logged
that line at once take it from ``--logs/start/<config>.jsonl`` (a ``-n 1`` run of the
same command, whose first evaluation is the same one), and config4p, whose initial
meta-nets and recorded states are config4's, from config4's.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"config1": "(1) no RNN_p, n = 20", "config2": "(2) no RNN_p, n = 4",
           "config4": "(4) RNN_p, n = 4", "config4p": "(4p) RNN_p, n = 4, only RNN_p trained"}


def read(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    its = [r for r in rows if "wall" in r]
    vals = {r["iteration"]: r["validation"] for r in rows if "validation" in r}
    return its, vals


def before(logs, name):
    """The held-out evaluation before meta-training (see the module docstring)."""
    _, vals = read(os.path.join(logs, f"{name}.jsonl"))
    if 0 in vals:
        return vals[0], "its log"
    source = "config4" if name == "config4p" else name
    _, start = read(os.path.join(logs, "start", f"{source}.jsonl"))
    return start[0], f"start/{source}.jsonl"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", default=os.path.join(HERE, "fig4_gpu"))
    parser.add_argument("--out", default=os.path.join(HERE, "fig4_gpu.md"))
    a = parser.parse_args()
    runs = {name: read(os.path.join(a.logs, f"{name}.jsonl")) for name in CONFIGS}
    common = min(len(its) for its, _ in runs.values())
    lines = ["# Figure 4 on convnet, on a GPU (RNN_p ablation, longer meta-training)", "",
             "Made by `python docs/fig4_gpu.py` from the logs in `docs/fig4_gpu/`, written by "
             "`OUT=... bash docs/fig4_gpu.sh 390` on one NVIDIA H200 (four meta-trainings side "
             "by side, each stopped after 390 s; b_mt = 64, T = 10, meta lr 0.01, seed 0, "
             "float32, mnist5k's meta split).  Held-out: `MetaTrainer.evaluate`, every 25 "
             "meta-iterations, on fixed unrolls recorded with each configuration's untrained "
             "meta-nets (so even (2) and (4) are scored at different states: P = I in (2), the "
             "untrained RNN_p's P in (4)).", "",
             "| configuration | meta-iterations done | held-out l_p: before → 25 → 50 → 75 → last "
             "(iteration) | held-out ‖r_n‖: same points | mean l_p, iterations 1–"
             f"{common} | mean ‖r_n‖, same |", "|---|---|---|---|---|---|"]
    means = {}
    for name, label in CONFIGS.items():
        its, vals = runs[name]
        first, _ = before(a.logs, name)
        last = max(vals)
        points = [first] + [vals[k] for k in (25, 50, 75) if k in vals and k != last] + [vals[last]]
        lp = " → ".join(f"{p['l_p']:.4f}" for p in points) + f" ({last})"
        res = " → ".join(f"{p['residual']:.4f}" for p in points)
        lp_mean = np.mean([r["l_p"] for r in its[:common]])
        res_mean = np.mean([r["residual"] for r in its[:common]])
        lines.append(f"| {label} | {len(its)} | {lp} | {res} | {lp_mean:.4f} | {res_mean:.4f} |")
        means[name] = lp_mean
    first4, _ = before(a.logs, "config4p")
    _, vals4p = runs["config4p"]
    spread = [v["l_p"] for v in vals4p.values()]
    befores = {name: before(a.logs, name) for name in CONFIGS}
    trained_s = {name: runs[name][1][max(runs[name][1])]["l_p"] - befores[name][0]["l_p"]
                 for name in ("config1", "config2", "config4")}
    res20 = max(v["residual"] for v in runs["config1"][1].values())
    res4 = min(v["residual"] for name in ("config2", "config4", "config4p")
               for v in runs[name][1].values())
    lines += ["", "Before-values: " + "; ".join(f"{name} from {befores[name][1]}"
                                                for name in CONFIGS) + ".", "",
              "## What it shows", "",
              f"- **RNN_p alone learns nothing that moves l_p.** With RNN_s held at its start "
              f"(4p), the held-out l_p went from {first4['l_p']:.4f} to "
              f"{vals4p[max(vals4p)]['l_p']:.4f} in {max(vals4p)} meta-iterations of RNN_p; "
              f"its evaluations stay within {max(spread) - min(spread):.4f} of each other.",
              "- **Where RNN_s is trained, l_p rises** (held-out, before → last evaluation: "
              + ", ".join(f"{CONFIGS[k][:3]} {v:+.4f}" for k, v in trained_s.items())
              + "): RNN_s sets the damping, and l_p rises with the damping "
              "(docs/mlhf_probe.md section 1).",
              "- **The configurations are not scored at the same states.** Before any "
              f"meta-training the untrained (4) scores {befores['config4'][0]['l_p']:.4f}, "
              f"(1) {befores['config1'][0]['l_p']:.4f} and (2) "
              f"{befores['config2'][0]['l_p']:.4f}: each configuration's recorded unrolls visit "
              "their own states, and l_p ≈ −sqrt(gᵀA⁻¹g) grows with the gradient. The means "
              "along meta-training are likewise at each run's own states (lowest: "
              f"{CONFIGS[min(means, key=means.get)]}). So where (4) is near or below (1) "
              "here, that is not RNN_p's doing; docs/mlhf_probe_convnet.md compares preconditioners at "
              "the same solves.",
              f"- ‖r_n‖: the largest held-out value with n = 20 ({res20:.4f}) is "
              f"{res4 / res20:.0f} times below the smallest with n = 4 ({res4:.4f}), as in "
              "the paper's Figure 4 (b).", ""]
    text = "\n".join(lines)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
