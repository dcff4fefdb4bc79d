"""CIFAR-10 from the official python tarball (Krizhevsky, 2009).

``cifar-10-python.tar.gz`` (md5 c58f30108f718f92721af3b95e74349a) holds
``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``: pickled dicts
with ``b"data"`` (10000, 3072) uint8, each row the 1024 red, then green, then
blue values of a 32×32 image in row-major order (so a reshape to (3, 32, 32)
gives NCHW), and ``b"labels"`` (10000 ints in 0..9); ``batches.meta`` has the
class names.  Reading these pickles from the user's own copy of the official
tarball is the standard way to load CIFAR-10 (it is how the dataset is
distributed); we read them straight from the tarball, without extracting.
"""
from __future__ import annotations

import os
import pickle
import tarfile
import zlib

import numpy as np

from hfmeta.errors import UserError

from .download import download, file_digest, verify_checksum
from .hdf5 import DatasetWriter

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def _load_member(tar, name):
    """Unpickle ``cifar-10-batches-py/<name>`` from the open tarball."""
    try:
        member = tar.getmember(f"cifar-10-batches-py/{name}")
    except KeyError:
        raise UserError(f"{tar.name}: no cifar-10-batches-py/{name} inside; is this the "
                        f"CIFAR-10 python tarball?") from None
    with tar.extractfile(member) as f:
        return pickle.load(f, encoding="bytes")


def _images_and_labels(batch, name):
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise UserError(f"CIFAR-10 {name}: unexpected shapes data {data.shape}, "
                        f"labels {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def fetch(raw_dir, progress=None):
    """Download the tarball (md5-checked) into ``raw_dir``; return its path."""
    dest = os.path.join(raw_dir, TARBALL)
    if not os.path.exists(dest):
        download(URL, dest, md5=MD5, progress=progress)
    return dest


def convert_cifar10(src, out_path, progress=None, check_md5=True, name="cifar10"):
    """Write the HDF5 dataset ``out_path`` from the tarball ``src`` (or a folder holding it).

    ``check_md5=False`` skips the checksum (used by the tests' small tarballs).
    """
    if os.path.isdir(src):
        src = os.path.join(src, TARBALL)
    if not os.path.isfile(src):
        raise UserError(f"{src}: file not found (expected the CIFAR-10 python tarball {TARBALL})")
    if check_md5:
        verify_checksum(src, md5=MD5)
    provenance = {
        "source": "CIFAR-10 (Krizhevsky 2009), python version, " + URL,
        "files": {os.path.basename(src): {"md5": file_digest(src, "md5"),
                                          "sha256": file_digest(src)}},
        "licence": "no explicit licence; cite Krizhevsky, Learning Multiple Layers "
                   "of Features from Tiny Images, 2009",
        "created_by": "hfmeta.datasets.cifar10.convert_cifar10",
    }
    try:
        tar = tarfile.open(src, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{src}: not a readable tar.gz file ({e})") from None
    try:
        with tar:
            _write(tar, out_path, name, provenance, progress)
    except (tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError, KeyError) as e:
        raise UserError(f"{src}: corrupt CIFAR-10 tarball ({type(e).__name__}: {e})") from None
    return out_path


def _write(tar, out_path, name, provenance, progress):
    meta = _load_member(tar, "batches.meta")
    class_names = [c.decode() for c in meta[b"label_names"]]
    parts = [("train", b) for b in TRAIN_BATCHES] + [("test", TEST_BATCH)]
    with DatasetWriter(out_path, name, class_names, (3, 32, 32), provenance) as writer:
        for step, (split, batch_name) in enumerate(parts):
            images, labels = _images_and_labels(_load_member(tar, batch_name), batch_name)
            writer.append(split, images, labels)
            if progress is not None:
                progress(step + 1, len(parts))
