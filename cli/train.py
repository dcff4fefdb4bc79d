"""``hfmeta train``: train one model on one dataset with one optimizer."""
from __future__ import annotations

import json
import os
import sys
import time

import click
import numpy as np

from .params import not_empty, on_command_line

DEFAULTS = {"model": "cnn-small", "data": "mnist5k", "optimizer": "mlhf"}


def parse_hparams(pairs, option="--hp"):
    """``("lr=0.01", "momentum=0.9")`` -> ``{"lr": 0.01, "momentum": 0.9}`` (JSON values);
    ``option`` names the option in the error for a pair without ``=``."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint=option)
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_options(pairs):
    """Model options ``width=0.5`` or ``channels=[8,16]`` (JSON values; lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in parse_hparams(pairs, "--model-opt").items()}


def stored_path(value):
    """A file given by a relative path is stored absolute in the run's configuration, so
    that ``--resume`` and ``evaluate`` find it from any folder; names stay as they are."""
    return os.path.abspath(value) if value and os.path.isfile(value) else value


def refuse_changes_on_resume(ctx):
    """``--resume`` continues a run with the configuration saved in its folder: any option
    given with it but ``--steps`` (and the global ``-q``/``-v``) would be silently ignored,
    so it is an error."""
    given = [max(p.opts, key=len) for c in (ctx, ctx.parent) if c is not None
             for p in c.command.params
             if p.name not in ("resume", "steps", "verbose", "quiet")
             and on_command_line(c, p.name)]
    if given:
        raise click.UsageError(f"--resume continues the run with its saved configuration; "
                               f"{', '.join(given)} cannot change it (only --steps can)")


def default_run_dir(model, optimizer):
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{optimizer}")


PRECISE_BN_HELP = ("Evaluate with batch-norm statistics recomputed at the current weights "
                   "from N unaugmented training batches (precise BN) instead of the running "
                   "averages, which lag when steps are long; both are logged.  0: running "
                   "averages.")


def note_precise_bn_without_batch_norm(run):
    """--precise-bn on a net without batch norm: say that it changes nothing."""
    if run.cfg.precise_bn and not run.model.init_state():
        click.echo(f"note: {run.cfg.model} has no batch norm; --precise-bn changes nothing",
                   err=True)


def format_summary(s):
    return (f"{s['model']} ({s['params']:,} parameters) on {s['data']}/{s['split']} with "
            f"{s['optimizer']}: {s['steps']} steps, {s['samples']:,} samples, {s['wall']:.1f} s\n"
            f"  train loss {s['train_loss']:.4f}   test loss {s['test_loss']:.4f}   "
            f"test accuracy {100 * s['test_acc']:.2f}%\n"
            + (f"  (batch norm: statistics of {s['precise_bn']} training batches at the final "
               f"weights; with the running averages: test loss {s['running_test_loss']:.4f}, "
               f"test accuracy {100 * s['running_test_acc']:.2f}%)\n"
               if "precise_bn" in s else "")
            + f"  run folder: {s['run_dir']}")


@click.command("train")
@click.option("--model", default=DEFAULTS["model"], show_default=True, help="Zoo model name.")
@click.option("--model-opt", "model_opts", multiple=True, metavar="NAME=VALUE",
              help="Model option, e.g. width=0.25 (repeatable).")
@click.option("--data", default=DEFAULTS["data"], show_default=True, callback=not_empty,
              help="Dataset name (see `hfmeta data list`) or path to an .h5 file.")
@click.option("--split", type=click.Choice(["train", "target", "meta"]), default="train",
              show_default=True, help="Training split: all, the paper's last 2/5, or first 3/5.")
@click.option("--optimizer", "-o", default=DEFAULTS["optimizer"], show_default=True,
              help="Optimizer: mlhf, l2l, slstm (learned) or sgd, rmsprop, adam, hf-fixed, hf-lm, "
                   "martens-hf, kfac, sou.")
@click.option("--hp", "hps", multiple=True, metavar="NAME=VALUE",
              help="Optimizer hyper-parameter, e.g. lr=0.01 (repeatable).")
@click.option("--meta", default=None, callback=not_empty,
              help="Meta-parameter checkpoint of a learned optimizer.")
@click.option("--batch-size", "-b", default=128, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--epochs", default=3.0, show_default=True,
              metavar="X", type=click.FloatRange(min=0, min_open=True),
              help="Epochs over the training split.")
@click.option("--steps", metavar="N", type=click.IntRange(min=1), default=None,
              help="Number of steps (overrides --epochs).")
@click.option("--eval-every", metavar="N", type=click.IntRange(min=1), default=None,
              help="Steps between test evaluations [default: one epoch].")
@click.option("--checkpoint-every", default=100, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--augment/--no-augment", default=None, help="Crop+flip [default: dataset's].")
@click.option("--precise-bn", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="N", help=PRECISE_BN_HELP)
@click.option("--out", default=None, callback=not_empty,
              help="Run folder [default: runs/<time>-<model>-<opt>].")
@click.option("--resume", default=None, metavar="RUN_DIR", callback=not_empty,
              help="Continue a stopped run.")
@click.pass_context
def command(ctx, model, model_opts, data, split, optimizer, hps, meta, batch_size, epochs,
            steps, eval_every, checkpoint_every, augment, precise_bn, out, resume):
    """Train a network; log metrics, checkpoint, print a summary.

    With no options it trains `cnn-small` on the 4,000 training digits of the
    shipped mnist5k for 3 epochs on the CPU with the shipped meta-trained MLHF (LSTM-predicted
    damping and preconditioner, 4-step PCG; hfmeta/meta/shipped/README.md says
    how it was meta-trained).
    """
    from hfmeta.train import Run, RunConfig

    obj = ctx.obj
    if resume is not None:
        refuse_changes_on_resume(ctx)
        run = Run.resume(resume, steps=steps)
    else:
        cfg = RunConfig(model=model, model_options=parse_options(model_opts),
                        data=stored_path(data), split=split, optimizer=optimizer,
                        hparams=parse_hparams(hps), meta=stored_path(meta),
                        batch_size=batch_size, epochs=epochs, steps=steps, eval_every=eval_every,
                        checkpoint_every=checkpoint_every, augment=augment, seed=obj["seed"],
                        device=obj["device"], dtype=obj["dtype"], precise_bn=precise_bn)
        run = Run.create(cfg, out or default_run_dir(model, optimizer), unique=out is None)
    quiet = obj.get("verbosity", 0) < 0
    if not quiet:
        click.echo(f"training {run.model!r} with {run.opt!r} for {run.total_steps} steps "
                   f"-> {run.dir}", err=True)
        note_precise_bn_without_batch_norm(run)
    # a diverging run is reported by the non-finite-loss check, not by NumPy warnings
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
            click.progressbar(length=run.total_steps - run.step, label="training", hidden=quiet,
                              file=sys.stderr) as bar:
        def on_eval(e):
            if obj.get("verbosity", 0) >= 1:
                click.echo(f"\nstep {e['step']}: train loss {e['train_loss']:.4f}  test loss "
                           f"{e['test_loss']:.4f}  test accuracy {100 * e['test_acc']:.2f}%",
                           err=True)
        summary = run.train(on_step=lambda step, info: bar.update(1), on_eval=on_eval)
    click.echo(format_summary(summary))
