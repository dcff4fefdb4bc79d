"""MNIST from the official IDX files (LeCun, Cortes, Burges).

The IDX format: a 4-byte magic ``00 00 <type> <ndim>`` (type 0x08 = unsigned
byte), then ``ndim`` big-endian int32 sizes, then the data in C order.  Images
are ``idx3`` (n, 28, 28), labels ``idx1`` (n,).  Files may be gzip'ed
(``*.gz``, as distributed) or raw.

    convert_mnist(src_dir, out_path)  # src_dir holds the four files
"""
from __future__ import annotations

import gzip
import os

import numpy as np

from hfmeta.errors import UserError

from .download import download_first, file_digest
from .hdf5 import DatasetWriter

MIRRORS = ("http://yann.lecun.com/exdb/mnist/",                # the canonical home
           "https://ossci-datasets.s3.amazonaws.com/mnist/")   # PyTorch's mirror
FILES = {  # role -> (file name as distributed, md5 of the .gz)
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
CLASS_NAMES = [str(d) for d in range(10)]
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """The array stored in an IDX file (gzip'ed or raw), with its header checked."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise UserError(f"{path}: broken gzip stream ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise UserError(f"{path}: IDX header says shape {shape} ({expected} bytes) "
                        f"but the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_files(src_dir):
    """Paths of the four IDX files in ``src_dir`` (``.gz`` or uncompressed)."""
    found = {}
    for role, (gz_name, _) in FILES.items():
        raw_name = gz_name[:-3]
        candidates = [gz_name, raw_name, raw_name.replace("-idx", ".idx")]
        path = next((os.path.join(src_dir, c) for c in candidates
                     if os.path.isfile(os.path.join(src_dir, c))), None)
        if path is None:
            raise UserError(f"{src_dir}: no {gz_name} (or {raw_name}) found; "
                            f"MNIST needs the four official IDX files")
        found[role] = path
    return found


def fetch(raw_dir, progress=None):
    """Download the four .gz files (md5-checked) into ``raw_dir``; return it."""
    for gz_name, md5 in FILES.values():
        dest = os.path.join(raw_dir, gz_name)
        if not os.path.exists(dest):
            download_first([m + gz_name for m in MIRRORS], dest, md5=md5, progress=progress)
    return raw_dir


def convert_mnist(src_dir, out_path, progress=None, name="mnist"):
    """Write the HDF5 dataset ``out_path`` from the IDX files in ``src_dir``."""
    paths = find_files(src_dir)
    provenance = {
        "source": "MNIST (LeCun, Cortes, Burges), official IDX files",
        "files": {os.path.basename(p): {"sha256": file_digest(p)} for p in paths.values()},
        "licence": "CC BY-SA 3.0",
        "created_by": "hfmeta.datasets.mnist.convert_mnist",
    }
    with DatasetWriter(out_path, name, CLASS_NAMES, (1, 28, 28), provenance) as writer:
        for step, split in enumerate(("train", "test")):
            images = read_idx(paths[f"{split}_images"])
            labels = read_idx(paths[f"{split}_labels"])
            if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
                raise UserError(f"{paths[f'{split}_images']}: expected uint8 images "
                                f"(n, 28, 28), got {images.dtype} {images.shape}")
            if labels.shape != images.shape[:1]:
                raise UserError(f"MNIST {split}: {images.shape[0]} images but "
                                f"{labels.shape[0]} labels")
            writer.append(split, images[:, None], labels)
            if progress is not None:
                progress(step + 1, 2)
    return out_path
