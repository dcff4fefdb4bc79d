"""``hfmeta bench``: time the building blocks and the optimizers on one net."""
from __future__ import annotations

import math

import click

from .params import InShape, in_existing_folder
from .train import parse_options


def finite(ctx, param, value):
    """Callback of a float option: NaN is refused (a FloatRange lets it through, as
    every comparison with NaN is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"give a finite number, got {value}")
    return value


@click.command("bench")
@click.option("--model", default="convnet", show_default=True)
@click.option("--model-opt", "model_opts", multiple=True, metavar="NAME=VALUE")
@click.option("--in-shape", type=InShape(), default="3,32,32", show_default=True, help="c,h,w")
@click.option("--classes", default=10, show_default=True, metavar="N", type=click.IntRange(min=2))
@click.option("--batch-size", "-b", default=128, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--items", default="fwdbwd,gvp,pcg,sgd,adam,kfac,mlhf,mlhf-q", show_default=True,
              help="Comma-separated: fwdbwd, gvp, pcg, any optimizer (sgd, rmsprop, adam, "
                   "hf-fixed, hf-lm, martens-hf, kfac, sou, mlhf, l2l, slstm), mlhf-q, unroll; "
                   "or 'all'.")
@click.option("--repeats", default=5, show_default=True, metavar="N", type=click.IntRange(min=1))
@click.option("--unroll-T", "unroll_T", default=10, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--unroll-batch", default=64, show_default=True,
              metavar="N", type=click.IntRange(min=1))
@click.option("--compare-torch", is_flag=True,
              help="Also time the same net and weights in PyTorch (installed separately).")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: elapsed time; cpu: this process's CPU time (robust to other "
                   "processes on a shared machine; use with one BLAS thread, CPU only).")
@click.option("--warm-up", "warm_seconds", type=click.FloatRange(min=0, max=600), default=None,
              callback=finite, metavar="SECONDS",
              help="Untimed round-robin work before timing, so that a GPU's clock has "
                   "ramped up  [default: 3 on the GPU, 0 on the CPU].")
@click.option("--json", "json_out", default=None, callback=in_existing_folder,
              help="Also write the results to this file.")
@click.pass_context
def command(ctx, model, model_opts, in_shape, classes, batch_size, items, repeats, unroll_T,
            unroll_batch, compare_torch, clock, warm_seconds, json_out):
    """Median times (and ratios) of forward+backward, Gv, PCG and optimizer steps.

    All items run in one process, so the ratios are fair on a noisy machine.
    Set OPENBLAS_NUM_THREADS before running to control BLAS threads.
    """
    from hfmeta import bench
    from hfmeta.storage import write_json

    known = bench.all_items()
    chosen = known if items == "all" else tuple(i.strip() for i in items.split(",") if i.strip())
    if not chosen:
        raise click.BadParameter("name at least one item", param_hint="--items")
    unknown = [i for i in chosen if i not in known]
    if unknown:
        raise click.BadParameter(f"unknown item(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(known)}", param_hint="--items")
    quiet = ctx.obj.get("verbosity", 0) < 0
    net, results = bench.run(model, in_shape, classes, batch_size, ctx.obj["dtype"],
                             ctx.obj["device"], chosen, repeats, unroll_T, unroll_batch,
                             parse_options(model_opts),
                             progress=None if quiet else
                             lambda what: click.echo(f"timing {what} ...", err=True),
                             compare_torch=compare_torch, clock=clock,
                             warm_seconds=warm_seconds)
    click.echo(f"clock: {clock}")
    click.echo(bench.format_table(net, results, batch_size))
    if json_out:
        write_json(json_out, {"model": model, "params": net.num_params, "batch": batch_size,
                              "device": ctx.obj["device"], "dtype": ctx.obj["dtype"],
                              "clock": clock, "results": results}, indent=2)
