"""``hfmeta plot``: the papers' figures from finished (or running) runs."""
from __future__ import annotations

import click

from .params import in_existing_folder


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "-o", default="runs.png", show_default=True, callback=in_existing_folder,
              help="Figure file to write; its extension names the format (.png, .pdf, .svg, ...).")
@click.option("--label", "labels", multiple=True, help="Curve labels, one per run, in order.")
@click.option("--window", default=20, show_default=True, metavar="N", type=click.IntRange(min=1),
              help="Moving average of the step losses.")
@click.option("--linear", is_flag=True, help="Linear instead of log scale for the loss.")
def command(runs, out, labels, window, linear):
    """Training loss and test accuracy against samples seen and against wall time."""
    from hfmeta.plot import plot_runs

    if labels and len(labels) != len(runs):
        raise click.BadParameter(f"{len(labels)} labels for {len(runs)} runs", param_hint="--label")
    click.echo(plot_runs(list(runs), out, list(labels) or None, window, not linear))
