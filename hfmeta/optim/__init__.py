"""Hand-crafted optimizers behind one interface (see :mod:`hfmeta.optim.base`).

::

    opt = get_optimizer("hf-lm", lr=1.0, damping=0.1)
    state = opt.init(w)
    w, state, info = opt.step(problem, w, state, batch)

=============  ======================================================  ==========
name           method                                                  module
=============  ======================================================  ==========
``sgd``        SGD with heavy-ball momentum                            sgd
``rmsprop``    RMSprop (Tieleman & Hinton 2012)                        rmsprop
``adam``       Adam (Kingma & Ba 2015)                                 adam
``hf-fixed``   HF with fixed damping, CG n = 20 (MLHF baseline)        hf
``hf-lm``      HF with Levenberg–Marquardt damping (MLHF baseline)     hf
``martens-hf`` Martens (2010) full HF recipe                           martens_hf
``kfac``       K-FAC / KFC (Martens & Grosse 2015; Grosse & Martens    kfac
               2016)
``sou``        diagonal second-order update g / (|h| + μ) (SLSTM)      sou
=============  ======================================================  ==========

``GRIDS`` / :func:`grid` give the MLHF supplement's Table 1 search spaces.
"""
from __future__ import annotations

from ..errors import UserError
from .adam import Adam
from .base import Optimizer
from .grids import GRIDS, grid
from .hf import HF, HFLM
from .kfac import KFAC
from .martens_hf import MartensHF
from .rmsprop import RMSprop
from .sgd import SGD
from .sou import SOU

OPTIMIZERS = {cls.name: cls for cls in (SGD, RMSprop, Adam, HF, HFLM, MartensHF, KFAC, SOU)}


def get_optimizer(name: str, **hparams) -> Optimizer:
    """An optimizer by registry name with hyper-parameters (unknown ones are an error)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**hparams)


__all__ = ["Optimizer", "OPTIMIZERS", "GRIDS", "grid", "get_optimizer",
           "SGD", "RMSprop", "Adam", "HF", "HFLM", "MartensHF", "KFAC", "SOU"]
