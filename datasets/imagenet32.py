"""Downsampled ImageNet 32×32 / 64×64 (Chrabaszcz, Loshchilov, Hutter 2017).

The npz release (image-net.org, "Imagenet32_train_npz" / "Imagenet64_train_npz"
and the matching val archives; an image-net.org account is needed, so there is
no automatic download) holds ``train_data_batch_1.npz`` … ``_10.npz`` and
``val_data.npz``.  In each: ``data`` (n, 3·s·s) uint8, every row the s·s red,
then green, then blue values in row-major order (a reshape to (3, s, s) gives
NCHW), and ``labels`` (n,) in 1..1000 (1-based; we store 0-based).  Train
batches also carry ``mean``, which we ignore (we compute per-channel stats).

The ``data`` member is streamed row-block by row-block out of the zip, so a
1.5 GB batch of ImageNet64 never sits in memory whole.
"""
from __future__ import annotations

import glob
import os
import re
import zipfile

import numpy as np

from hfmeta.errors import UserError

from .download import file_digest
from .hdf5 import DatasetWriter

CLASSES = 1000
ROWS_PER_BLOCK = 8192


def find_batches(src_dir):
    """``(train_paths, val_path)``: the train batches in numeric order and ``val_data.npz``."""
    train = glob.glob(os.path.join(src_dir, "train_data_batch_*.npz"))
    train.sort(key=lambda p: int(re.search(r"_(\d+)\.npz$", p).group(1)))
    val = os.path.join(src_dir, "val_data.npz")
    if not train or not os.path.isfile(val):
        raise UserError(f"{src_dir}: expected train_data_batch_<k>.npz files and "
                        f"val_data.npz (the downsampled-ImageNet npz release)")
    return train, val


def _open_member(archive, key):
    """The open ``key.npy`` stream of an npz plus its shape and dtype."""
    try:
        stream = archive.open(key + ".npy")
    except KeyError:
        raise UserError(f"{archive.filename}: no {key!r} array inside") from None
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise UserError(f"{archive.filename}: unsupported .npy format version {version}")
    shape, fortran_order, dtype = readers[version](stream)
    if fortran_order:
        raise UserError(f"{archive.filename}: {key!r} is stored in Fortran order")
    return stream, shape, np.dtype(dtype)


def read_npz_batch(path, side):
    """Yield ``(images (k, 3, s, s) uint8, labels (k,) int64 0-based)`` blocks of one file."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable npz file ({e})") from None
    with archive:
        with np.load(path) as npz:
            if "labels" not in npz.files:
                raise UserError(f"{path}: no 'labels' array inside")
            labels = np.asarray(npz["labels"], dtype=np.int64).reshape(-1) - 1
        stream, shape, dtype = _open_member(archive, "data")
        with stream:
            row = 3 * side * side
            if dtype != np.uint8 or len(shape) != 2 or shape[1] != row or shape[0] != labels.size:
                raise UserError(f"{path}: expected data ({labels.size}, {row}) uint8 for "
                                f"{side}x{side} images, got {dtype} {shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
                raise UserError(f"{path}: labels outside 1..{CLASSES}")
            for start in range(0, shape[0], ROWS_PER_BLOCK):
                k = min(ROWS_PER_BLOCK, shape[0] - start)
                block = stream.read(k * row)
                if len(block) != k * row:
                    raise UserError(f"{path}: truncated data array")
                images = np.frombuffer(block, dtype=np.uint8).reshape(k, 3, side, side)
                yield images, labels[start:start + k]


def convert_imagenet(src_dir, out_path, side=32, progress=None, name=None):
    """Write the HDF5 dataset ``out_path`` from the npz batches in ``src_dir``."""
    name = name or f"imagenet{side}"
    train, val = find_batches(src_dir)
    provenance = {
        "source": f"Downsampled ImageNet {side}x{side} (Chrabaszcz, Loshchilov, Hutter "
                  f"2017), npz release from image-net.org",
        "files": {os.path.basename(p): {"sha256": file_digest(p)} for p in train + [val]},
        "licence": "ImageNet terms of access (non-commercial research and education)",
        "created_by": "hfmeta.datasets.imagenet32.convert_imagenet",
    }
    parts = [("train", p) for p in train] + [("test", val)]
    class_names = [f"class_{i}" for i in range(CLASSES)]
    with DatasetWriter(out_path, name, class_names, (3, side, side), provenance) as writer:
        for step, (split, path) in enumerate(parts):
            for images, labels in read_npz_batch(path, side):
                writer.append(split, images, labels)
            if progress is not None:
                progress(step + 1, len(parts))
    return out_path
