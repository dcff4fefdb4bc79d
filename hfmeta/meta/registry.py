"""Learned optimizers by name, and where their shipped meta-parameters live.

Every learned optimizer module exposes

* an optimizer class with the interface of :mod:`hfmeta.optim.base`
  (``init``, ``step``, ``state_to_dict``, ``state_from_dict``) and a
  constructor ``Cls.from_meta(path_or_None, model, **hparams)`` that loads the
  meta-parameters (``None``: the checkpoint shipped with hfmeta, or untrained
  meta-nets with ``untrained=True``) and checks that they fit ``model``
  (transfer between models; a clear error where kinds or layers cannot be
  matched);
* a ``MetaTrainer`` class: ``MetaTrainer(problem, batches, **options)``,
  ``.run(iterations, on_iteration=None, should_stop=None) -> list of
  per-iteration dicts``, ``.save(path, command="", model_name=None)``,
  ``.resume_from(path)``.
"""
from __future__ import annotations

import importlib
import os

from ..errors import UserError

#: name -> (optimizer module, optimizer class, meta-trainer module, meta-trainer class)
LEARNED = {
    "mlhf": ("hfmeta.meta.mlhf", "MLHF", "hfmeta.meta.mlhf_train", "MetaTrainer"),
    "l2l": ("hfmeta.meta.l2l", "L2L", "hfmeta.meta.l2l", "MetaTrainer"),
    "slstm": ("hfmeta.meta.slstm", "SLSTM", "hfmeta.meta.slstm", "MetaTrainer"),
}

SHIPPED_DIR = os.path.join(os.path.dirname(__file__), "shipped")


def shipped_path(name: str) -> str:
    """Path of the meta-parameters shipped for ``name`` (``hfmeta/meta/shipped/NAME.h5``)."""
    return os.path.join(SHIPPED_DIR, f"{name}.h5")


def _load(name, which):
    if name not in LEARNED:
        raise UserError(f"unknown learned optimizer {name!r}; choose one of {', '.join(LEARNED)}")
    opt_module, opt_cls, trainer_module, trainer_cls = LEARNED[name]
    if which == "optimizer":
        return getattr(importlib.import_module(opt_module), opt_cls)
    return getattr(importlib.import_module(trainer_module), trainer_cls)


def get_learned(name, meta=None, model=None, **hparams):
    """A learned optimizer ready to step ``model``'s parameters."""
    return _load(name, "optimizer").from_meta(meta, model, **hparams)


def get_meta_trainer(name):
    """The meta-training class of learned optimizer ``name``."""
    return _load(name, "trainer")
