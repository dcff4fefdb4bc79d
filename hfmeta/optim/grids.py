"""The hyper-parameter search spaces of the MLHF supplement, Table 1.

``grid(name, batch_size=128, baseline_batch=128)`` lists every hyper-parameter
dict of an optimizer's grid.  The first-order learning rates are
``{0.1, 0.01, 0.001} × b_tr / b_bl`` with ``b_tr`` the training batch size and
``b_bl`` the baseline batch size (128 for the paper's section 4.1 convnet
runs, 256 for section 4.4's ResNet); the second-order grids do not scale.
Fixed settings of Table 1 (HF: n = 20, ε = 1e-5, P = I, momentum 0) are the
optimizers' defaults and repeated here so a grid point is complete.

``GRIDS[name]`` is the grid at ``b_tr = b_bl``.  Martens' HF and SOU have no
grid in Table 1 (Martens' HF adapts its damping and step; SOU's α, μ grid is
ours, spanning the same decades).
"""
from __future__ import annotations

from itertools import product

LRS_FIRST_ORDER = (0.1, 0.01, 0.001)
RATES = (0.9, 0.99, 0.999)
LRS_SECOND_ORDER = (1.0, 0.1, 0.01, 0.001)
DAMPINGS = (1.0, 0.1, 0.01, 0.001)
LM_DECAYS = (2 / 3, 0.9, 0.99, 0.999)


def _points(**axes):
    names = list(axes)
    return [dict(zip(names, values)) for values in product(*axes.values())]


def grid(name: str, batch_size: int = 128, baseline_batch: int = 128) -> list:
    """Every hyper-parameter dict of ``name``'s Table 1 grid for training batch ``batch_size``."""
    scale = batch_size / baseline_batch
    lrs = tuple(lr * scale for lr in LRS_FIRST_ORDER)
    hf_fixed = {"cg_iters": 20, "cg_eps": 1e-5, "momentum": 0.0}
    grids = {
        "sgd": lambda: _points(lr=lrs, momentum=RATES),
        "rmsprop": lambda: _points(lr=lrs, decay=RATES),
        "adam": lambda: _points(lr=lrs, beta1=RATES, beta2=RATES),
        "kfac": lambda: _points(lr=LRS_SECOND_ORDER, damping=DAMPINGS, cov_ema_decay=RATES),
        "hf-fixed": lambda: [{**p, **hf_fixed}
                             for p in _points(lr=LRS_SECOND_ORDER, damping=DAMPINGS)],
        "hf-lm": lambda: [{**p, **hf_fixed} for p in
                          _points(lr=LRS_SECOND_ORDER, damping=DAMPINGS, decay=LM_DECAYS)],
        "martens-hf": lambda: [{}],
        "sou": lambda: _points(lr=(1.0, 0.1, 0.01), mu=(1e-1, 1e-2, 1e-3)),
    }
    if name not in grids:
        raise ValueError(f"no grid for optimizer {name!r}; choose one of {', '.join(grids)}")
    return grids[name]()


GRIDS = {name: grid(name) for name in
         ("sgd", "rmsprop", "adam", "kfac", "hf-fixed", "hf-lm", "martens-hf", "sou")}
