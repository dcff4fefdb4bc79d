"""``hfmeta info``: backend, device, versions, and the model zoo."""
from __future__ import annotations

import platform

import click

from .params import InShape, not_empty


@click.command("info")
@click.option("--model", "model_name", default=None, callback=not_empty,
              help="Also print this zoo model's parameter layout.")
@click.option("--in-shape", "shape", type=InShape(), default="3,32,32", show_default=True,
              help="Input shape c,h,w of the zoo's parameter counts (or of --model).")
@click.option("--classes", default=10, show_default=True, metavar="N", type=click.IntRange(min=2),
              help="Number of classes, likewise.")
@click.pass_context
def command(ctx, model_name, shape, classes):
    """Print versions, the array backend and device, and the zoo's parameter counts."""
    from importlib.metadata import version

    import h5py
    import numpy as np

    from hfmeta import __version__, backend
    from hfmeta.models import ZOO, build

    click.echo(f"hfmeta {__version__}  python {platform.python_version()}  numpy {np.__version__}  "
               f"h5py {h5py.__version__}  click {version('click')}")
    if backend.cupy_available():
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        click.echo(f"cupy {cupy.__version__}  gpu: {props['name'].decode()}")
    else:
        click.echo("cupy: not available (CPU only)")
    backend.xp_for(ctx.obj["device"])       # --device gpu without CuPy: the usual one-line error
    cfg = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
    blas = cfg.get("Build Dependencies", {}).get("blas", {}).get("name", "?") if isinstance(cfg, dict) else "?"
    click.echo(f"device: {ctx.obj['device']}  dtype: {ctx.obj['dtype']}  BLAS: {blas}")
    if model_name:
        model = build(model_name, shape, classes, dtype=ctx.obj["dtype"])
        click.echo(model.layout.describe())
        return
    click.echo(f"model zoo on inputs {shape}, {classes} classes:")
    for name in ZOO:
        try:
            n = build(name, shape, classes).num_params
            click.echo(f"  {name:12s} {n:>12,d} parameters")
        except Exception as e:  # a model that does not fit these inputs
            click.echo(f"  {name:12s} (does not fit: {e})")
