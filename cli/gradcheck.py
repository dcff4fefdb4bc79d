"""``hfmeta gradcheck``: verify every hand-written derivative against finite differences."""
from __future__ import annotations

import sys
import time

import click


@click.command("gradcheck")
@click.option("--layers/--no-layers", default=True, show_default=True, help="Check every layer.")
@click.option("--models/--no-models", default=True, show_default=True, help="Check every zoo model.")
@click.option("-k", "--filter", "pattern", default="", help="Only cases whose name contains this.")
@click.pass_context
def command(ctx, layers, models, pattern):
    """Check backward, R-op, adjoint identity (and the R-op of backward) in float64.

    Prints one row per check with its relative error on stdout (progress goes
    to stderr); exits 1 if any check is above 1e-6.  Runs on --device, always in
    float64, whatever --dtype says.
    """
    from hfmeta import backend, gradcheck, gradcheck_cases as cases

    device = ctx.obj["device"]
    backend.xp_for(device)          # --device gpu without CuPy: the usual one-line error
    if not layers and not models:
        raise click.UsageError("nothing to check: both --no-layers and --no-models were given")
    layer_cases = [c for c in cases.LAYER_CASES if pattern in c[0]] if layers else []
    model_cases = [c for c in cases.MODEL_CASES if pattern in c[0]] if models else []
    if not layer_cases and not model_cases:
        raise click.UsageError(f"no check matches {pattern!r}")
    results = []
    quiet = ctx.obj.get("verbosity", 0) < 0
    t0 = time.perf_counter()
    jobs = [("layer", c) for c in layer_cases] + [("model", c) for c in model_cases]
    with click.progressbar(jobs, label="checking", hidden=quiet, file=sys.stderr,
                           item_show_func=lambda j: j and j[1][0]) as bar:
        for kind, case in bar:
            if kind == "layer":
                results += cases.check_layer_case(*case, device=device)
            else:
                results += cases.check_model_case(*case, device=device)
    click.echo(gradcheck.format_table(results))
    click.echo(f"({time.perf_counter() - t0:.1f} s, {device}, float64, "
               f"tolerance {gradcheck.TOL:g})")
    if any(not r.ok for r in results):
        ctx.exit(1)
