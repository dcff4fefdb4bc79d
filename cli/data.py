"""``hfmeta data``: prepare, list and inspect datasets.

    hfmeta data list
    hfmeta data info mnist5k
    hfmeta data prepare mnist --from ~/Downloads/mnist      # the four IDX files
    hfmeta data prepare cifar10 --download                  # fetch, check md5, convert
    hfmeta data prepare imagenet32 --from ~/Imagenet32 --out /big/disk/imagenet32.h5
"""
from __future__ import annotations

import os

import click

from hfmeta.errors import UserError

from .params import file_name


class _Progress:
    """A ``progress(done, total)`` callback drawing ``click.progressbar`` bars.

    A new bar starts whenever ``total`` changes or ``done`` goes back (the
    next file of a multi-file download).  Silent with ``--quiet``.
    """

    def __init__(self, label, enabled):
        self.label, self.enabled = label, enabled
        self.bar, self.total, self.done = None, None, 0

    def __call__(self, done, total):
        if not self.enabled:
            return
        if self.bar is None or total != self.total or done < self.done:
            self.close()
            self.bar = click.progressbar(length=total or 0, label=self.label, file=None)
            self.bar.__enter__()
            self.total, self.done = total, 0
        self.bar.update(done - self.done)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group("data")
def command():
    """Prepare, list and inspect datasets (HDF5 files in the data directory)."""


@command.command("prepare")
@click.argument("name")
@click.option("--from", "src", metavar="PATH", default=None,
              help="Official files to convert (see `hfmeta data list`).")
@click.option("--download", is_flag=True, help="Download the official files first (checksummed).")
@click.option("--out", metavar="FILE", default=None, callback=file_name,
              help="Where to write the .h5 file (default: the data directory).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.pass_context
def prepare(ctx, name, src, download, out, force):
    """Convert dataset NAME from official files (--from PATH) or a download (--download)."""
    from hfmeta.data import open_dataset
    from hfmeta.datasets import registry

    entry = registry.entry(name)
    if src is None and not download:
        if entry.shipped:
            raise UserError(f"{name} ships with hfmeta ({registry.default_path(name)}); to "
                            f"rebuild it give --from {entry.source_hint}")
        raise UserError(f"give --from PATH ({entry.source_hint}) or --download")
    if src is not None and download:
        raise UserError("give either --from PATH or --download, not both")
    out = os.path.expanduser(out) if out else str(registry.data_dir() / f"{name}.h5")
    if os.path.exists(out) and not force:
        raise UserError(f"{out} already exists; use --force to overwrite it")
    show = ctx.obj.get("verbosity", 0) >= 0
    if download:
        bar = _Progress(f"downloading {name}", show)
        try:
            src = registry.fetch(name, progress=bar)
        finally:
            bar.close()
    src = os.path.expanduser(src)
    bar = _Progress(f"converting {name}", show)
    try:
        path = registry.prepare(name, src=src, out=out, progress=bar)
    finally:
        bar.close()
    with open_dataset(path) as ds:
        click.echo(f"wrote {path}: {ds.sizes['train']} train / {ds.sizes['test']} test images "
                   f"{'x'.join(map(str, ds.image_shape))}, {ds.classes} classes, "
                   f"{os.path.getsize(path) / 1e6:.1f} MB")


@command.command("list")
def list_datasets():
    """Known datasets, which are prepared, and where."""
    from hfmeta.datasets import registry

    click.echo(f"data directory: {registry.data_dir()}  (set HFMETA_DATA to change it)")
    for name, entry in registry.DATASETS.items():
        found = registry.find_prepared(name)
        where = str(found) if found else f"not prepared (--from {entry.source_hint}" + \
            (" or --download)" if entry.fetch else ")")
        click.echo(f"  {name:11s} {entry.description}")
        click.echo(f"  {'':11s} {'shipped' if entry.shipped else 'prepared' if found else ''}"
                   f"{': ' if found else ''}{where}")


@command.command("info")
@click.argument("file_or_name")
def info(file_or_name):
    """Sizes, classes, shapes, channel mean/std and provenance of a dataset."""
    from hfmeta.data import open_dataset

    with open_dataset(file_or_name) as ds:
        size_mb = os.path.getsize(ds.path) / 1e6
        names = ", ".join(ds.class_names[:10]) + (", ..." if ds.classes > 10 else "")
        click.echo(f"{ds.name}  ({ds.path}, {size_mb:.2f} MB, format {ds.format_version})")
        click.echo(f"  images   {' x '.join(map(str, ds.image_shape))} (c x h x w), uint8")
        click.echo(f"  classes  {ds.classes}: {names}")
        click.echo("  splits   " + ", ".join(f"{k} {v}" for k, v in ds.sizes.items()))
        click.echo("  mean     " + " ".join(f"{m:.4f}" for m in ds.mean))
        click.echo("  std      " + " ".join(f"{s:.4f}" for s in ds.std))
        click.echo("  provenance:")
        for key, value in ds.provenance.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    click.echo(f"    {key}: {sub} {v}")
            else:
                click.echo(f"    {key}: {value}")
