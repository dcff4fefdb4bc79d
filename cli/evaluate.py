"""``hfmeta evaluate``: the test figures of a run's checkpoint, without training."""
from __future__ import annotations

import click

from .params import on_command_line
from .train import PRECISE_BN_HELP, note_precise_bn_without_batch_norm


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--precise-bn", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="N", help=PRECISE_BN_HELP)
@click.pass_context
def command(ctx, run_dir, precise_bn):
    """Test loss and accuracy of RUN_DIR's checkpoint; writes nothing.

    Runs on the run's device and dtype unless the global --device / --dtype are given.
    Example: hfmeta --device gpu evaluate runs/my-resnet --precise-bn 10
    """
    from hfmeta.errors import UserError
    from hfmeta.train import CHECKPOINT, Run

    given = {name: ctx.obj[name] for name in ("device", "dtype")
             if on_command_line(ctx.parent, name)}
    run = Run.open(run_dir, optimizer=False, precise_bn=precise_bn, **given)
    if run.step == 0:
        raise UserError(f"{run_dir} has no {CHECKPOINT} to evaluate")
    if ctx.obj.get("verbosity", 0) >= 0:
        note_precise_bn_without_batch_norm(run)
    figures = run.test_figures()
    where = f"{run.cfg.model} on {run.cfg.data} (test split), step {run.step} of {run_dir}"
    rows = [("", "")]
    if "running_test_acc" in figures:
        rows = [("with the running BN averages", "running_"),
                (f"with BN statistics of {precise_bn} training batches at these weights", "")]
    width = max(len(label) for label, _ in rows)
    click.echo("\n".join([where] + [
        f"  {label:{width}s}{'  ' if label else ''}test loss {figures[prefix + 'test_loss']:.4f}"
        f"   test accuracy {100 * figures[prefix + 'test_acc']:.2f}%" for label, prefix in rows]))
