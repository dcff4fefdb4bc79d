"""``hfmeta compare``: several optimizers, each tuned over its grid, one table."""
from __future__ import annotations

import os
import shutil
import signal

import click
import numpy as np

from .params import not_empty
from .train import PRECISE_BN_HELP, parse_hparams, parse_options, stored_path


def _label(hparams):
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(hparams.items())) or "defaults"


def check_before_training(optimizers, fixed, meta_files, model, model_opts, data, obj):
    """Build each optimizer once with its fixed hyper-parameters and meta-parameter file, so
    that a bad value or a wrong file stops the comparison before anything is trained."""
    from hfmeta.data import open_dataset
    from hfmeta.models import build
    from hfmeta.train import make_optimizer

    ds = open_dataset(data)
    net = build(model, ds.image_shape, ds.classes, dtype=obj["dtype"], device=obj["device"],
                **parse_options(model_opts))
    for name in optimizers:
        make_optimizer(name, fixed.get(name, {}), meta_files.get(name), net)


@click.command("compare")
@click.argument("optimizers", nargs=-1, required=True)
@click.option("--model", default="cnn-small", show_default=True)
@click.option("--model-opt", "model_opts", multiple=True, metavar="NAME=VALUE")
@click.option("--data", default="mnist5k", show_default=True, callback=not_empty)
@click.option("--split", type=click.Choice(["train", "target", "meta"]), default="target",
              show_default=True, help="Training split (the MLHF paper trains on the last 2/5).")
@click.option("--batch-size", "-b", default=128, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--epochs", default=1.0, show_default=True,
              metavar="X", type=click.FloatRange(min=0, min_open=True))
@click.option("--steps", metavar="N", type=click.IntRange(min=1), default=None)
@click.option("--eval-every", metavar="N", type=click.IntRange(min=1), default=None)
@click.option("--grid/--no-grid", default=True, show_default=True,
              help="Tune each hand-crafted optimizer over its MLHF Table 1 grid (SOU's grid "
                   "is hfmeta's own; martens-hf has one point).")
@click.option("--grid-batch", default=128, show_default=True, metavar="N",
              type=click.IntRange(min=1),
              help="The baseline batch size b_bl of Table 1: the first-order learning rates "
                   "are {0.1, 0.01, 0.001} × batch size / b_bl (128 for the paper's convnet "
                   "runs, section 4.1; 256 for its ResNet runs, section 4.4).")
@click.option("--hp", "hps", multiple=True, metavar="OPT:NAME=VALUE",
              help="Fix a hyper-parameter of one optimizer, e.g. adam:lr=0.001 (repeatable); "
                   "the grid tunes the others.")
@click.option("--meta", "metas", multiple=True, metavar="OPT=FILE",
              help="Meta-parameters of a learned optimizer, e.g. mlhf=mlhf.h5.")
@click.option("--select", type=click.Choice(["train_loss", "test_acc"]), default="train_loss",
              show_default=True, help="What picks the best grid point.")
@click.option("--precise-bn", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="N", help=PRECISE_BN_HELP)
@click.option("--out", default="runs/compare", show_default=True, callback=not_empty,
              help="Folder of the comparison: compare.json and one folder per optimizer; "
                   "a re-run replaces compare.json and the folders of the optimizers it "
                   "compares.")
@click.option("--keep-all", is_flag=True, help="Keep every grid point's run, not only the best.")
@click.pass_context
def command(ctx, optimizers, model, model_opts, data, split, batch_size, epochs, steps,
            eval_every, grid, grid_batch, hps, metas, select, precise_bn, out, keep_all):
    """Train with each OPTIMIZER (tuned over its grid), keep the best runs, print one table.

    Example: hfmeta compare sgd rmsprop adam mlhf --epochs 2
    """
    from hfmeta.meta.registry import LEARNED
    from hfmeta.optim import OPTIMIZERS
    from hfmeta.storage import write_json

    obj = ctx.obj
    pairs = {}
    for item in hps:
        if ":" not in item:
            raise click.BadParameter(f"{item!r} is not OPT:NAME=VALUE", param_hint="--hp")
        opt, pair = item.split(":", 1)
        pairs.setdefault(opt, []).append(pair)
    fixed = {opt: parse_hparams(items) for opt, items in pairs.items()}
    for item in metas:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not OPT=FILE", param_hint="--meta")
    meta_files = dict(m.split("=", 1) for m in metas)
    for name in optimizers:
        if name not in OPTIMIZERS and name not in LEARNED:
            raise click.BadParameter(f"unknown optimizer {name!r}", param_hint="OPTIMIZERS")
    if len(set(optimizers)) < len(optimizers):
        raise click.BadParameter("an optimizer is named twice", param_hint="OPTIMIZERS")
    for option, names in (("--hp", fixed), ("--meta", meta_files)):
        stray = sorted(set(names) - set(optimizers))
        if stray:
            raise click.BadParameter(f"{', '.join(stray)} is not among the optimizers compared",
                                     param_hint=option)
    check_before_training(optimizers, fixed, meta_files, model, model_opts, data, obj)
    # a re-run replaces this comparison: its table and the folders of its optimizers
    # (stale grid points would otherwise sit beside the new ones, and an interrupted
    # re-run would leave the old table naming folders that now hold new runs)
    for stale in [os.path.join(out, "compare.json")] + [os.path.join(out, n) for n in optimizers]:
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    stop = []                                    # Ctrl-C between grid points
    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    try:
        rows = compare_all(optimizers, fixed, meta_files, grid, grid_batch, model, model_opts,
                           data, split, batch_size, epochs, steps, eval_every, select,
                           precise_bn, out, keep_all, obj, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    table = [f"{'optimizer':12s} {'grid':>5s} {'train loss':>11s} {'test loss':>10s} "
             f"{'test acc':>9s} {'wall s':>8s}  best hyper-parameters / run"]
    for name, n, s in rows:
        if s.get("diverged"):
            table.append(f"{name:12s} {n:5d}  every grid point diverged")
            continue
        table.append(f"{name:12s} {n:5d} {s['train_loss']:11.4f} {s['test_loss']:10.4f} "
                     f"{100 * s['test_acc']:8.2f}% {s['wall']:8.1f}  {_label(s['hparams'])}  "
                     f"{s['run_dir']}")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "compare.json"),
               [{"optimizer": n, "grid_points": k, **s} for n, k, s in rows],
               indent=2, default=float)
    click.echo("\n".join(table))


def compare_all(optimizers, fixed, meta_files, grid, grid_batch, model, model_opts, data, split,
                batch_size, epochs, steps, eval_every, select, precise_bn, out, keep_all, obj,
                stop):
    """Train every optimizer over its grid points; ``[(name, points, best summary)]``."""
    from hfmeta.errors import NonFiniteLoss, UserError
    from hfmeta.optim import OPTIMIZERS, grid as table1_grid
    from hfmeta.train import Run, RunConfig

    def interrupted(name, k, points):
        return UserError(f"interrupted in {name} [{k + 1}/{len(points)}]; the finished "
                         f"grid points are under {out}; no table was made (run compare "
                         f"again to make one)", exit_code=130)

    rows = []
    for name in optimizers:
        own = fixed.get(name, {})
        points = [{}]
        if grid and name in OPTIMIZERS:      # the grid with the fixed values put in, once each
            points = []
            for p in table1_grid(name, batch_size, grid_batch):
                if {**p, **own} not in points:
                    points.append({**p, **own})
        results = []
        for k, point in enumerate(points):
            hparams = {**point, **own}
            cfg = RunConfig(model=model, model_options=parse_options(model_opts),
                            data=stored_path(data), split=split, optimizer=name,
                            hparams=hparams, meta=stored_path(meta_files.get(name)),
                            batch_size=batch_size, epochs=epochs,
                            steps=steps, eval_every=eval_every, seed=obj["seed"],
                            device=obj["device"], dtype=obj["dtype"], precise_bn=precise_bn)
            run_dir = os.path.join(out, name, f"{k:03d}")
            if stop:
                raise interrupted(name, k, points)
            if obj.get("verbosity", 0) >= 0:
                click.echo(f"{name} [{k + 1}/{len(points)}] {_label(hparams)}", err=True)
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    run = Run.create(cfg, run_dir)
                    summary = run.train()
            except NonFiniteLoss as e:  # a diverging grid point is a result, not a failure
                if obj.get("verbosity", 0) >= 0:
                    click.echo(f"  diverged: {e}", err=True)
                summary = {"train_loss": float("inf"), "test_loss": float("inf"),
                           "test_acc": float("nan"), "wall": float("nan"), "run_dir": run_dir,
                           "diverged": True}
            except UserError as e:
                if e.exit_code != 130:
                    raise
                raise interrupted(name, k, points) from None
            else:
                if run.interrupted:                # Ctrl-C in the last step: that run is done
                    raise interrupted(name, k, points)
            summary["hparams"] = hparams
            results.append(summary)
        score = ((lambda s: s["train_loss"]) if select == "train_loss"
                 else (lambda s: -s["test_acc"]))
        best = min(results, key=lambda s: (not np.isfinite(score(s)), score(s)))
        if not keep_all:
            for s in results:
                if s is not best and os.path.isdir(s["run_dir"]):
                    shutil.rmtree(s["run_dir"])
        rows.append((name, len(results), best))
    return rows
