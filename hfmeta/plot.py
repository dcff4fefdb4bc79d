"""Figures like the papers': training loss and test accuracy against samples
seen and against wall time (MLHF paper, Figures 2 and 3), from run folders.

Needs matplotlib (``pip install -e .[plot]``); imported only when plotting.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .errors import UserError


def read_run(run_dir):
    """``(label, steps, evals)`` of a run folder's ``metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    from .train import read_metrics
    steps, evals = [], []
    for _, record in read_metrics(path):
        (evals if record["kind"] == "eval" else steps).append(record)
    if not steps:
        raise UserError(f"{run_dir} has no training steps logged yet")
    label = os.path.basename(os.path.normpath(run_dir))
    config = os.path.join(run_dir, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            try:
                cfg = json.load(f)
            except ValueError:
                cfg = None
        if isinstance(cfg, dict):            # the label only: a damaged config is no reason to stop
            label = f"{cfg.get('optimizer', '?')} ({label})"
    return label, steps, evals


def smooth(values, window):
    """Trailing moving average (the first points average what exists so far)."""
    values = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(values, 0, 0.0))
    k = np.arange(1, len(values) + 1)
    lo = np.maximum(k - window, 0)
    return (c[k] - c[lo]) / (k - lo)


def plot_runs(run_dirs, out, labels=None, window=20, log_loss=True):
    """Write a 2×2 figure: train loss / test accuracy × samples / wall time, in the
    format ``out``'s extension names (any matplotlib writes: png, pdf, svg, ...)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install -e .[plot]") from None
    fmt = os.path.splitext(out)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise UserError(f"-o {out}: name a figure file ending in "
                        f"{', '.join('.' + f for f in sorted(formats))}")
    runs = [read_run(d) for d in run_dirs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for k, (label, steps, evals) in enumerate(runs):
        label = labels[k] if labels else label
        loss = smooth([s["loss"] for s in steps], window)
        for col, key in enumerate(("samples", "wall")):
            axes[0, col].plot([s[key] for s in steps], loss, label=label)
            if evals:
                axes[1, col].plot([e[key] for e in evals], [100 * e["test_acc"] for e in evals],
                                  marker="o", markersize=3, label=label)
    for col, xlabel in enumerate(("training samples seen", "wall time (s, training only)")):
        axes[0, col].set_xlabel(xlabel)
        axes[1, col].set_xlabel(xlabel)
        axes[0, col].set_ylabel(f"training loss (moving average of {window})")
        axes[1, col].set_ylabel("test accuracy (%)")
        if log_loss:
            axes[0, col].set_yscale("log")
        for row in (0, 1):
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    tmp = out + ".tmp"
    fig.savefig(tmp, dpi=110, format=fmt)
    plt.close(fig)
    os.replace(tmp, out)
    return out
