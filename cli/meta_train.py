"""``hfmeta meta-train``: meta-train a learned optimizer (MLHF, L2L, SLSTM)."""
from __future__ import annotations

import inspect
import json
import os
import shlex
import signal
import sys
import time

import click
import numpy as np

from hfmeta.errors import UserError

from .params import in_existing_folder, not_empty
from .train import parse_hparams, parse_options


def check_known_options(trainer_cls, method, options):
    """A one-line error for an option the trainer does not take, listing those it does (a
    trainer that takes ``**options`` knows its ``defaults`` and its optimizer's)."""
    if "seed" in options:
        raise UserError("give the seed as `hfmeta --seed N meta-train ...`, not as --opt seed")
    params = inspect.signature(trainer_cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # L2L/SLSTM: the trainer's own options, then its optimizer's hyper-parameters
        known = [name for name in (*trainer_cls.defaults, *trainer_cls.optimizer_cls.defaults)
                 if name != "seed"]
        known = list(dict.fromkeys(known))
    else:
        known = [name for name in params if name not in ("problem", "batches", "seed")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"{method} meta-training: unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(known)}")


def refuse_another_model(path, model, net):
    """--resume continues a meta-training on the target net it was started on."""
    from hfmeta.storage import load_checkpoint
    if not os.path.isfile(path):
        return                                   # resume_from names the problem
    saved = load_checkpoint(path).get("config") or {}
    if saved.get("model") not in (None, model):
        raise UserError(f"{path} was meta-trained on --model {saved['model']}; --resume "
                        f"continues it on that model, not {model}")
    if saved.get("model_options") not in (None, net.config):
        raise UserError(f"{path} was meta-trained on {model} with options "
                        f"{saved['model_options']}; --resume continues it with those, "
                        f"not {net.config}")


def truncate_log(log_path, iteration):
    """Cut a meta-training log back to the saved ``iteration`` before a resume: the
    lines of later iterations (logged after the last save, they will be run again),
    the validation at ``iteration`` itself (the resumed run logs it first), the final
    before/after ``evaluation`` (written anew at the end) and a last line cut short by
    a kill.  Returns the validation logged at iteration 0, if any (the run's "before")."""
    from hfmeta.storage import read_jsonl, rewrite_lines
    if not os.path.exists(log_path):
        return None
    keep, first = [], None
    for line, record in read_jsonl(log_path, lambda r: isinstance(r, dict),
                                   "a meta-training log record"):
        at = record.get("iteration")
        if "evaluation" in record or not isinstance(at, int) or at > iteration:
            continue
        if "validation" in record:
            if at == iteration:
                continue
            if at == 0 and first is None:
                first = record["validation"]
        keep.append(line)
    rewrite_lines(log_path, keep)
    return first


def _mean(history, key, part):
    values = [h[key] for h in part if key in h and np.isfinite(h[key])]
    return float(np.mean(values)) if values else float("nan")


@click.command("meta-train")
@click.option("--method", "-m", type=click.Choice(["mlhf", "l2l", "slstm"]), default="mlhf",
              show_default=True)
@click.option("--model", default="cnn-small", show_default=True, help="Target net of meta-training.")
@click.option("--model-opt", "model_opts", multiple=True, metavar="NAME=VALUE")
@click.option("--data", default="mnist5k", show_default=True, callback=not_empty)
@click.option("--split", type=click.Choice(["meta", "train"]), default="meta", show_default=True,
              help="The paper meta-trains on the first 3/5 of the training set.")
@click.option("--batch-size", "-b", default=64, show_default=True,
              metavar="N", type=click.IntRange(min=1),
              help="b_mt.")
@click.option("--iterations", "-n", default=100, show_default=True,
              metavar="N", type=click.IntRange(min=1),
              help="Meta-iterations (unrolls) to run; with --resume, N more.")
@click.option("--opt", "opts", multiple=True, metavar="NAME=VALUE",
              help="Meta-trainer option, e.g. T=10, n=4, use_rnn_p=false, meta_lr=0.001.")
@click.option("--out", required=True, callback=in_existing_folder,
              help="Meta-parameter file (.h5) to write.")
@click.option("--resume", is_flag=True, help="Continue from the meta-parameters in --out.")
@click.option("--force", is_flag=True, help="Overwrite --out (and its log) if it exists.")
@click.option("--save-every", default=10, show_default=True,
              metavar="N", type=click.IntRange(min=1),
              help="Meta-iterations between saves.")
@click.option("--eval-every", default=0, show_default=True, metavar="N", type=click.IntRange(min=0),
              help="Meta-iterations between evaluations on the fixed held-out unrolls "
                   "(a 'validation' line in the log; 0: only before and after, the one before "
                   "written at once).  MLHF only: l2l and slstm are not evaluated.")
@click.pass_context
def command(ctx, method, model, model_opts, data, split, batch_size, iterations, opts, out,
            resume, force, save_every, eval_every):
    """Meta-train a learned optimizer; writes meta-parameters (HDF5) and a log (.jsonl).

    Example (the paper's objective, as the shipped mlhf_paper.h5 was made):
    hfmeta meta-train --method mlhf -b 128 --iterations 100 --opt meta_lr=0.01 --out mlhf.h5
    """
    from hfmeta.backend import get_array_module
    from hfmeta.data import open_dataset
    from hfmeta.meta.registry import get_meta_trainer
    from hfmeta.models import build
    from hfmeta.problem import Problem

    obj = ctx.obj
    if out.endswith(".jsonl"):
        raise UserError(f"--out {out}: the log is written beside it as a .jsonl file; give the "
                        f"meta-parameter file another name (.h5)")
    if os.path.exists(out) and not (resume or force):
        raise UserError(f"{out} already exists; use --resume to continue from it or --force "
                        f"to overwrite it")
    ds = open_dataset(data)
    net = build(model, ds.image_shape, ds.classes, dtype=obj["dtype"], device=obj["device"],
                **parse_options(model_opts))
    batches = ds.batches(split, batch_size, seed=obj["seed"], dtype=obj["dtype"],
                         device=obj["device"], augment=ds.default_augment)
    trainer_cls, options = get_meta_trainer(method), parse_hparams(opts, "--opt")
    check_known_options(trainer_cls, method, options)
    trainer = trainer_cls(Problem(net), batches, seed=obj["seed"], **options)
    log_path = os.path.splitext(out)[0] + ".jsonl"
    first = None
    if resume:
        refuse_another_model(out, model, net)
        trainer.resume_from(out)
        first = truncate_log(log_path, trainer.iteration)
    evaluate = getattr(trainer, "evaluate", None)
    before = evaluate() if evaluate else None
    command_line = "hfmeta " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    quiet = obj.get("verbosity", 0) < 0
    history = []
    t0 = time.perf_counter()
    if force and not resume and os.path.exists(out):
        os.remove(out)          # overwritten as asked: no old file beside the new log
    with open(log_path, "a" if resume else "w") as log, \
            np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
            click.progressbar(length=iterations, label=f"meta-training {method}", hidden=quiet,
                              file=sys.stderr) as bar:
        if before is not None:   # logged at once: a run stopped early keeps its starting point
            log.write(json.dumps({"iteration": trainer.iteration, "validation": before}) + "\n")
            log.flush()

        def on_iteration(stats):
            if not bool(get_array_module(trainer.theta).isfinite(trainer.theta).all()):
                kept = (f"{out} keeps the meta-parameters last saved" if os.path.exists(out)
                        else "nothing was saved")
                raise UserError(f"meta-parameters not finite after meta-iteration "
                                f"{stats['iteration']} (lower meta_lr?); {kept}", exit_code=3)
            history.append(stats)
            log.write(json.dumps({k: (float(v) if isinstance(v, (np.floating, float)) else v)
                                  for k, v in stats.items()}) + "\n")
            log.flush()
            bar.update(1)
            if evaluate and eval_every and stats["iteration"] % eval_every == 0:
                log.write(json.dumps({"iteration": stats["iteration"],
                                      "validation": evaluate()}) + "\n")
                log.flush()
            if stats["iteration"] % save_every == 0:
                trainer.save(out, command=command_line, model_name=model)
        # Ctrl-C ends the meta-iteration under way, saves and exits (as `hfmeta train` does)
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            trainer.run(iterations, on_iteration, should_stop=lambda: bool(interrupted))
        finally:
            signal.signal(signal.SIGINT, previous)
    trainer.save(out, command=command_line, model_name=model)
    if interrupted and len(history) < iterations:      # on the last iteration: finish
        raise UserError(f"interrupted after meta-iteration {trainer.iteration}; meta-parameters "
                        f"saved in {out}; continue with --resume", exit_code=130)
    wall = time.perf_counter() - t0
    try:
        after = evaluate() if evaluate else None
    except KeyboardInterrupt:              # Click would say "Aborted!"
        raise UserError(f"interrupted in the final held-out evaluation; the meta-parameters "
                        f"of meta-iteration {trainer.iteration} are saved in {out}",
                        exit_code=130) from None
    k = max(1, min(10, len(history) // 4))
    keys = [key for key in ("l_p", "l_s", "meta_loss", "loss", "residual", "es_fitness")
            if key in history[0]]
    click.echo(f"{method} meta-trained on {model}/{data}:{split}, b_mt={batch_size}, "
               f"{len(history)} meta-iterations in {wall:.1f} s -> {out}")
    for key in keys:
        click.echo(f"  {key:10s} first {k}: {_mean(history, key, history[:k]):+.4f}   "
                   f"last {k}: {_mean(history, key, history[-k:]):+.4f}")
    if before is not None:
        before = first or before             # a resumed run: its very start
        click.echo("  on fixed held-out unrolls (same start nets and batches), before -> after:")
        for key in before:
            click.echo(f"  {key:10s} {before[key]:+.4f} -> {after[key]:+.4f}")
        with open(log_path, "a") as log:
            log.write(json.dumps({"evaluation": {"before": before, "after": after}}) + "\n")
