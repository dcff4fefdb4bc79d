"""Training runs: one model × dataset × optimizer, logged, checkpointed, resumable.

::

    cfg = RunConfig(model="cnn-small", data="mnist5k", optimizer="adam", epochs=3)
    summary = Run.create(cfg, "runs/adam").train()
    summary = Run.resume("runs/adam").train()          # after a kill or Ctrl-C

A run folder holds

* ``config.json``   -- the :class:`RunConfig` (everything needed to redo the run),
* ``metrics.jsonl`` -- one JSON object per line: ``{"kind": "step", "step",
  "samples", "wall", "loss", ...optimizer info}`` every ``log_every`` steps and
  ``{"kind": "eval", "step", "samples", "wall", "train_loss", "test_loss",
  "test_acc"}`` at every evaluation (``wall`` counts the optimizer steps only,
  not batch loading or evaluation, so curves against wall time compare
  optimizers fairly),
* ``checkpoint.h5`` -- weights, optimizer state, batch-norm running
  statistics, the data stream position, the clock and the batch losses since
  the last evaluation, written atomically every ``checkpoint_every`` steps and
  at the end,
* ``summary.json``  -- the final numbers.

config.json and summary.json are written atomically too
(:func:`hfmeta.storage.write_json`).  Resuming reloads the checkpoint, drops
metric lines written after it, and continues; because the batch of step k is a
pure function of (seed, k) and the optimizer state is saved exactly, a resumed
run ends with the same weights, and logs the same evaluations, as an
uninterrupted one (a run killed after its last checkpoint but before its
summary resumes to write the summary).  Ctrl-C (SIGINT) finishes the current
step, saves, and exits (on the last step it finishes the run); a non-finite
loss (or non-finite weights after a step, or a non-finite test loss) stops the
run and keeps the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .checks import COUNT, NATURAL, POSITIVE, check_options, check_representable, optional
from .errors import NonFiniteLoss, UserError
from .problem import Problem
from .storage import load_checkpoint, read_jsonl, rewrite_lines, save_checkpoint, write_json

CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.jsonl", "checkpoint.h5", "summary.json"
#: the configuration a checkpoint's weights, optimizer state and data stream belong to:
#: config.json edited afterwards must agree (steps, evaluation, logging, the device and
#: the paths of moved files may change)
STATE_DEFINING = ("model", "model_options", "split", "optimizer", "hparams", "batch_size",
                  "seed", "dtype", "augment")


@dataclass
class RunConfig:
    """Everything that defines a training run (saved as ``config.json``)."""
    model: str = "cnn-small"
    model_options: dict = field(default_factory=dict)
    data: str = "mnist5k"
    split: str = "train"              # "target" for the MLHF paper's protocol
    optimizer: str = "mlhf"
    hparams: dict = field(default_factory=dict)
    meta: str | None = None           # meta-parameter checkpoint of a learned optimizer
    batch_size: int = 128
    epochs: float = 3.0
    steps: int | None = None          # overrides epochs when given
    eval_every: int | None = None     # default: once per epoch
    log_every: int = 1
    checkpoint_every: int = 100
    augment: bool | None = None       # default: the dataset's (crop+flip for CIFAR)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    precise_bn: int = 0               # evaluate with BN statistics from this many batches at w

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown run configuration keys: {', '.join(unknown)}")
        return cls(**d)

    def check(self):
        """Raise a :class:`UserError` naming the first field that is not usable: a name
        that is not a string, options that are not a dict, a count out of its range."""
        for name in ("model", "data", "split", "optimizer"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"{name} must be a name, got {getattr(self, name)!r}")
        for name in ("model_options", "hparams"):
            if not isinstance(getattr(self, name), dict):
                raise UserError(f"{name} must be a dict of options, got {getattr(self, name)!r}")
        check_options(None, dataclasses.asdict(self), RUN_RANGES)


RUN_RANGES = {"batch_size": COUNT, "steps": optional(COUNT),
              "eval_every": optional(COUNT), "log_every": COUNT,
              "checkpoint_every": COUNT, "precise_bn": NATURAL, "seed": NATURAL,
              "epochs": POSITIVE}


def refuse_to_overwrite(run_dir):
    """A new run may go to a new or empty folder only: a :class:`UserError` for a folder
    holding a run (resume it) or other files, or for a file."""
    if os.path.isfile(run_dir):
        raise UserError(f"{run_dir} is a file; choose another --out")
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if os.path.exists(os.path.join(run_dir, CONFIG)):
            raise UserError(f"{run_dir} already holds a run; use --resume {run_dir} "
                            f"or choose another --out")
        raise UserError(f"{run_dir} is not empty; choose another --out")


def claim_new_folder(base):
    """Create and return the first of ``base``, ``base-2``, ``base-3``, … that does not
    exist; ``os.mkdir`` fails if another process made it first, so each caller gets
    its own."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for k in range(1, 10 ** 6):
        path = base if k == 1 else f"{base}-{k}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f"no free folder name next to {base}")


def make_optimizer(name, hparams, meta=None, model=None):
    """A hand-crafted optimizer from :mod:`hfmeta.optim`, or a learned one from :mod:`hfmeta.meta`."""
    from .optim import OPTIMIZERS, get_optimizer
    if name in OPTIMIZERS:
        if meta:
            raise UserError(f"--meta is for learned optimizers; {name!r} is hand-crafted")
        opt = get_optimizer(name, **hparams)
    else:
        from .meta.registry import LEARNED, get_learned
        if name not in LEARNED:
            raise UserError(f"unknown optimizer {name!r}; choose one of "
                            f"{', '.join(list(OPTIMIZERS) + list(LEARNED))}")
        opt = get_learned(name, meta=meta, model=model, **hparams)
    if model is not None:      # a value the model's dtype cannot hold would train silently wrong
        check_representable(name, opt.hparams, opt.ranges, model.dtype)
    return opt


class Run:
    """A training run bound to its folder.  Build with :meth:`create` or :meth:`resume`."""

    def __init__(self, cfg: RunConfig, run_dir: str, checkpoint=None, optimizer=True):
        from .data import open_dataset
        from .models import build

        self.cfg, self.dir = cfg, run_dir
        self.xp = backend.xp_for(cfg.device)
        self.dataset = open_dataset(cfg.data)
        self.model = build(cfg.model, self.dataset.image_shape, self.dataset.classes,
                           dtype=cfg.dtype, device=cfg.device, **cfg.model_options)
        self.problem = Problem(self.model)
        # ``optimizer=False``: only to evaluate (a learned optimizer's --meta file need not exist)
        self.opt = make_optimizer(cfg.optimizer, cfg.hparams, cfg.meta, self.model) if optimizer \
            else None
        augment = self.dataset.default_augment if cfg.augment is None else cfg.augment
        self.batches = self.dataset.batches(cfg.split, cfg.batch_size, seed=cfg.seed,
                                            augment=augment, dtype=cfg.dtype, device=cfg.device)
        if cfg.steps is None and not math.isfinite(cfg.epochs * self.batches.steps_per_epoch):
            raise UserError(f"--epochs {cfg.epochs:g} is more steps than can be counted")
        self.total_steps = (cfg.steps if cfg.steps is not None
                            else max(1, int(round(cfg.epochs * self.batches.steps_per_epoch))))
        self.eval_every = cfg.eval_every or self.batches.steps_per_epoch
        self.test = self.dataset.load("test", dtype=cfg.dtype, device=cfg.device)
        # fixed, unaugmented batches of the training split for precise-BN evaluation: an
        # iterator of their own, so the training stream (and its checkpointed state) is untouched
        self.bn_batches = (self.dataset.batches(cfg.split, cfg.batch_size, seed=cfg.seed,
                                                augment=False, dtype=cfg.dtype,
                                                device=cfg.device)
                           if cfg.precise_bn else None)
        self._window = []        # batch losses since the last evaluation (checkpointed)
        if checkpoint is None:
            self.w = self.model.init(cfg.seed)
            self.opt_state = self.opt.init(self.w) if self.opt else None
            self.step, self.wall = 0, 0.0
        else:
            self._restore(checkpoint)

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, run_dir: str, unique=False):
        """A new run in ``run_dir``, which must not exist or be an empty folder: one
        holding a run (its config.json, with or without a checkpoint) is resumed with
        :meth:`resume`, and other files are not overwritten.  ``unique``: ``run_dir`` is a
        default name (``hfmeta train`` without ``--out``); the run takes the first of
        ``run_dir``, ``run_dir-2``, ``run_dir-3``, … that it can create, so two runs
        started in the same second get a folder each; two started into the same ``run_dir``
        at once both pass the emptiness check, and the first to create its metrics log
        takes the folder."""
        if not unique:
            refuse_to_overwrite(run_dir)
        cfg.check()                    # (open checks a saved configuration, naming its file)
        run = cls(cfg, run_dir)        # validates model/data/optimizer before writing anything
        if unique:
            run.dir = run_dir = claim_new_folder(run_dir)
        else:
            os.makedirs(run_dir, exist_ok=True)
        try:               # "x": a run started into the same --out since the check above wins
            open(os.path.join(run_dir, METRICS), "x").close()
        except FileExistsError:
            raise UserError(f"{run_dir} was taken by another run meanwhile; choose another "
                            f"--out") from None
        run._save_config()
        return run

    @classmethod
    def resume(cls, run_dir: str, steps: int | None = None):
        """The run of ``run_dir`` at its checkpoint, ready to train on; log lines written
        after the checkpoint are dropped.  ``steps``: a new total, written to config.json
        (so a later ``--resume`` without it goes on to the same total), and a finished
        run's summary.json is removed (it is written again at the new end)."""
        run = cls.open(run_dir, steps=steps)
        finished = os.path.exists(os.path.join(run_dir, SUMMARY))
        if steps is not None and steps < run.step:
            raise UserError(f"{run_dir} has already taken {run.step} steps, more than "
                            f"--steps {steps}; give --steps above {run.step} to train on")
        if run.step >= run.total_steps and (finished or run._logged_eval() is None):
            # training on would only log a spurious evaluation; a run stopped between its
            # last checkpoint and its summary (a hard kill) resumes to write the summary
            raise UserError(f"{run_dir} has already taken its {run.step} steps; resume with "
                            f"--steps above {run.step} to train on")
        if steps is not None:
            run._save_config()
            if finished:
                os.remove(os.path.join(run_dir, SUMMARY))
        run._truncate_metrics()
        return run

    @classmethod
    def open(cls, run_dir: str, optimizer=True, **overrides):
        """The run of ``run_dir`` at its checkpoint (or at the start without one), its
        configuration with ``overrides`` (``steps``, ``precise_bn``, … when not None);
        nothing in the folder is changed.  ``optimizer=False`` builds no optimizer (to
        evaluate: a learned optimizer's meta-parameter file need not exist any more)."""
        path = os.path.join(run_dir, CONFIG)
        if not os.path.isfile(path):
            raise UserError(f"{run_dir} is not a run folder (no {CONFIG})")
        with open(path) as f:
            try:
                saved = json.load(f)
            except ValueError as e:
                raise UserError(f"{path} is not readable JSON ({e})") from None
        if not isinstance(saved, dict):
            raise UserError(f"{path} is not a run configuration")
        cfg = RunConfig.from_dict(saved)
        try:
            cfg.check()
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
        cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        ckpt_path = os.path.join(run_dir, CHECKPOINT)
        ckpt = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None
        if ckpt is not None and not (isinstance(ckpt.get("weights"), dict)
                                     and "w" in ckpt["weights"]
                                     and {"data", "step", "wall"} <= set(ckpt)):
            raise UserError(f"{ckpt_path} is not a training checkpoint")
        if ckpt is not None and isinstance(ckpt.get("config"), dict):
            differ = [k for k in STATE_DEFINING         # (both sides read from JSON)
                      if k in ckpt["config"] and ckpt["config"][k] != saved.get(k)]
            if differ:
                raise UserError(f"{path} and {ckpt_path} disagree on {', '.join(differ)}: "
                                f"the checkpoint was written by another configuration")
        return cls(cfg, run_dir, ckpt, optimizer)

    def _restore(self, ck):
        w = ck["weights"]["w"]
        if w.shape != (self.model.num_params,):
            raise UserError(f"checkpoint weights have {w.shape[0]} entries, model "
                            f"{self.cfg.model} has {self.model.num_params}")
        self.w = backend.to_device(w.astype(self.model.dtype), self.cfg.device)
        self.opt_state = None
        if self.opt:
            try:
                self.opt_state = self.opt.state_from_dict(ck.get("optimizer", {}), self.xp)
                missing = sorted(set(self.opt.init(self.w)) - set(self.opt_state))
            except KeyError as e:
                missing = [e.args[0]]
            if missing:
                raise UserError(f"{os.path.join(self.dir, CHECKPOINT)}: the optimizer state "
                                f"lacks {', '.join(map(repr, missing))}, which "
                                f"{self.cfg.optimizer} keeps")
        self.problem.state = {k: backend.to_device(v, self.cfg.device)
                              for k, v in ck.get("bn_state", {}).items()}
        self.batches.load_state_dict(ck["data"])
        self.step, self.wall = int(ck["step"]), float(ck["wall"])
        self._window = [float(v) for v in ck.get("window") or []]

    def _logged_eval(self):
        """The evaluation record already logged at the current step, or None."""
        path = os.path.join(self.dir, METRICS)
        if not os.path.exists(path):
            return None
        found = [record for _, record in read_metrics(path)
                 if record["kind"] == "eval" and record["step"] == self.step]
        return found[-1] if found else None

    def _truncate_metrics(self):
        """Drop log lines written after the checkpoint (they will be written again)."""
        path = os.path.join(self.dir, METRICS)
        if not os.path.exists(path):
            return
        rewrite_lines(path, [line for line, record in read_metrics(path)
                             if record["step"] <= self.step])

    # -- persistence ---------------------------------------------------------------
    def _save_config(self):
        write_json(os.path.join(self.dir, CONFIG), dataclasses.asdict(self.cfg), indent=2)

    def save(self):
        save_checkpoint(os.path.join(self.dir, CHECKPOINT),
                        config=dataclasses.asdict(self.cfg), layout=self.model.layout,
                        weights={"w": self.w}, optimizer=self.opt.state_to_dict(self.opt_state),
                        bn_state=dict(self.problem.state), data=self.batches.state_dict(),
                        step=self.step, wall=self.wall, window=list(self._window))

    def _diverged(self, what):
        """The :class:`NonFiniteLoss` that stops a diverged run; the last good
        checkpoint (if any) stays as it was."""
        checkpoint = os.path.join(self.dir, CHECKPOINT)
        kept = (f"the last good checkpoint is kept in {checkpoint}"
                if os.path.exists(checkpoint) else "no checkpoint was written yet")
        return NonFiniteLoss(f"{what} ({self.cfg.optimizer}); {kept}")

    def _log(self, record):
        with open(os.path.join(self.dir, METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ------------------------------------------------------------------
    def test_figures(self):
        """``{"test_loss", "test_acc"}`` at the current weights; with ``precise_bn`` = N
        and batch norm in the model, taken with the statistics of N training batches at
        these weights (:meth:`Problem.batch_statistics`), the running averages' figures
        beside them as ``running_test_loss`` and ``running_test_acc``."""
        x, y = self.test
        test_loss, test_acc = self.problem.evaluate(self.w, x, y)
        if not (self.cfg.precise_bn and self.problem.state):
            return {"test_loss": test_loss, "test_acc": test_acc}
        batches = [self.bn_batches.batch_at(k) for k in range(self.cfg.precise_bn)]
        state = self.problem.batch_statistics(self.w, batches)
        precise_loss, precise_acc = self.problem.evaluate(self.w, x, y, state=state)
        return {"test_loss": precise_loss, "test_acc": precise_acc,
                "running_test_loss": test_loss, "running_test_acc": test_acc}

    def evaluate(self):
        """Log (and return) an evaluation record: the training loss since the last one
        and :meth:`test_figures`.  A non-finite test loss (finite weights whose logits
        overflow) stops the run as a non-finite training loss does."""
        train_loss = float(np.mean(self._window)) if self._window else float("nan")
        self._window = []
        record = {"kind": "eval", "step": self.step, "samples": self.step * self.cfg.batch_size,
                  "wall": round(self.wall, 4), "train_loss": train_loss, **self.test_figures()}
        self._log(record)
        if not math.isfinite(record["test_loss"]):
            raise self._diverged(f"non-finite test loss at step {self.step}, training loss "
                                 f"{train_loss:.3g}")
        return record

    def train(self, on_step=None, on_eval=None):
        """Run to ``total_steps``; ``on_step(step, info)`` is called after each step
        and ``on_eval(record)`` after each evaluation.

        Returns the summary dict (also written to ``summary.json``).  Ctrl-C on the
        last step finishes the run; ``self.interrupted`` then tells a caller running
        several (``hfmeta compare``) that the user asked to stop.
        """
        interrupted = self.interrupted = []
        previous = None
        try:
            previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        except ValueError:  # not in the main thread: Ctrl-C handling is the caller's
            pass
        last_eval = None
        try:
            while self.step < self.total_steps and not interrupted:
                batch = next(self.batches)
                t0 = time.perf_counter()
                w, state, info = self.opt.step(self.problem, self.w, self.opt_state, batch)
                if self.cfg.device == "gpu":
                    self.xp.cuda.Stream.null.synchronize()
                self.wall += time.perf_counter() - t0
                loss = float(info["loss"])
                if not math.isfinite(loss) or not bool(self.xp.isfinite(w).all()):
                    raise self._diverged(f"non-finite loss at step {self.step + 1}")
                self.w, self.opt_state, self.step = w, state, self.step + 1
                self._window.append(loss)
                if self.step % self.cfg.log_every == 0:
                    self._log({"kind": "step", "step": self.step,
                               "samples": self.step * self.cfg.batch_size,
                               "wall": round(self.wall, 4),
                               **{k: _jsonable(v) for k, v in info.items()}})
                if self.step % self.eval_every == 0 or self.step == self.total_steps:
                    last_eval = self.evaluate()
                    if on_eval:
                        on_eval(last_eval)
                if self.step % self.cfg.checkpoint_every == 0:
                    self.save()
                if on_step:
                    on_step(self.step, info)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.save()
        if interrupted and self.step < self.total_steps:     # on the last step: finish
            raise UserError(f"interrupted at step {self.step}; checkpoint saved; continue with "
                            f"hfmeta train --resume {self.dir}", exit_code=130)
        if last_eval is None or last_eval["step"] != self.step:
            last_eval = self._logged_eval() or self.evaluate()
        summary = {"model": self.cfg.model, "params": self.model.num_params,
                   "data": self.cfg.data, "split": self.cfg.split,
                   "optimizer": self.cfg.optimizer, "steps": self.step,
                   "samples": self.step * self.cfg.batch_size, "wall": round(self.wall, 3),
                   "train_loss": last_eval["train_loss"], "test_loss": last_eval["test_loss"],
                   "test_acc": last_eval["test_acc"], "run_dir": self.dir}
        if "running_test_acc" in last_eval:
            summary.update(precise_bn=self.cfg.precise_bn,
                           running_test_loss=last_eval["running_test_loss"],
                           running_test_acc=last_eval["running_test_acc"])
        write_json(os.path.join(self.dir, SUMMARY), summary, indent=2)
        return summary


#: the numbers every metrics record of a kind carries (besides its integer ``step``)
METRIC_FIELDS = {"step": ("samples", "wall", "loss"),
                 "eval": ("samples", "wall", "train_loss", "test_loss", "test_acc")}


def _is_record(record):
    return (isinstance(record, dict) and record.get("kind") in METRIC_FIELDS
            and isinstance(record.get("step"), int)
            and all(isinstance(record.get(key), (int, float))
                    and not isinstance(record.get(key), bool)
                    for key in METRIC_FIELDS[record["kind"]]))


def read_metrics(path):
    """``[(line, record)]`` of a run's ``metrics.jsonl``.  A last line cut short (a run
    killed while writing it) is left out; any other line that is not a record of a
    known ``kind`` with its ``step`` and numbers (:data:`METRIC_FIELDS`) is a
    :class:`UserError` naming the file and line."""
    return read_jsonl(path, _is_record, "a metrics record")


def _jsonable(v):
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)
