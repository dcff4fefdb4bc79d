"""The common HDF5 writer every converter uses.

Layout of a prepared dataset file (``FORMAT_VERSION`` 1)::

    /train/images   uint8  (n, c, h, w)   NCHW, gzip-compressed, chunks of 16 images
    /train/labels   int64  (n,)
    /test/images    uint8  (m, c, h, w)
    /test/labels    int64  (m,)
    attributes of / :
        name            str
        classes         int     number of classes
        class_names     str[]   one per class
        mean, std       float64 (c,)   per-channel, on the train split, in [0, 1] pixel units
        provenance      str     JSON: source, checksums, licence, script
        format_version  int

Images are appended in pieces (``DatasetWriter.append``), so a converter never
holds more than one source batch in memory; the channel statistics are
accumulated exactly in integers while appending.  The file is written through
:func:`hfmeta.storage.atomic_hdf5`, so it only appears once complete.
"""
from __future__ import annotations

import json

import numpy as np

from hfmeta.storage import atomic_hdf5

FORMAT_VERSION = 1
SPLITS = ("train", "test")
IMAGES_PER_CHUNK = 16     # small chunks: cheap random access when batching


class DatasetWriter:
    """Context manager writing one dataset file.

    >>> with DatasetWriter(path, "mnist", class_names, (1, 28, 28), provenance) as w:
    ...     w.append("train", images_u8_nchw, labels)
    ...     w.append("test", images, labels)
    """

    def __init__(self, path, name, class_names, image_shape, provenance, compression_level=4):
        self.path = path
        self.name = name
        self.class_names = [str(c) for c in class_names]
        self.image_shape = tuple(int(d) for d in image_shape)
        self.provenance = dict(provenance)
        self.level = compression_level
        c = self.image_shape[0]
        self._sum = np.zeros(c, dtype=np.int64)        # sum of pixel values, per channel
        self._sum_sq = np.zeros(c, dtype=np.int64)     # sum of squared pixel values
        self._count = 0                                # pixels per channel seen

    def __enter__(self):
        self._context = atomic_hdf5(self.path)
        self.file = self._context.__enter__()
        for split in SPLITS:
            group = self.file.create_group(split)
            chunk = (IMAGES_PER_CHUNK,) + self.image_shape
            group.create_dataset("images", shape=(0,) + self.image_shape, dtype=np.uint8,
                                 maxshape=(None,) + self.image_shape, chunks=chunk,
                                 compression="gzip", compression_opts=self.level,
                                 shuffle=False)
            group.create_dataset("labels", shape=(0,), dtype=np.int64, maxshape=(None,),
                                 chunks=(4096,), compression="gzip")
        return self

    def append(self, split, images, labels):
        """Add ``images`` (n, c, h, w) uint8 and ``labels`` (n,) integers to ``split``."""
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(f"{self.name}: expected uint8 images of shape (n,)+"
                             f"{self.image_shape}, got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{self.name}: {images.shape[0]} images but labels of "
                             f"shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"{self.name}: labels outside 0..{len(self.class_names) - 1}")
        group = self.file[split]
        start = group["images"].shape[0]
        stop = start + images.shape[0]
        group["images"].resize(stop, axis=0)
        group["labels"].resize(stop, axis=0)
        group["images"][start:stop] = images
        group["labels"][start:stop] = labels.astype(np.int64)
        if split == "train":
            pixels = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1).astype(np.int64)
            self._sum += pixels.sum(axis=1)
            self._sum_sq += (pixels * pixels).sum(axis=1)
            self._count += pixels.shape[1]

    def channel_stats(self):
        """Per-channel mean and (population) std of the train images, in [0, 1] units."""
        if self._count == 0:
            raise ValueError(f"{self.name}: no training images were written")
        mean = self._sum / self._count
        var = self._sum_sq / self._count - mean * mean
        return mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._context.__exit__(type(e), e, e.__traceback__)   # removes the temp file
                raise
        return self._context.__exit__(exc_type, exc, tb)

    def _finish(self):
        for split in SPLITS:
            if self.file[split]["images"].shape[0] == 0:
                raise ValueError(f"{self.name}: the {split} split is empty")
        mean, std = self.channel_stats()
        attrs = self.file.attrs
        attrs["name"] = self.name
        attrs["classes"] = len(self.class_names)
        attrs["class_names"] = self.class_names
        attrs["mean"] = mean
        attrs["std"] = std
        attrs["provenance"] = json.dumps(self.provenance, sort_keys=True, indent=1)
        attrs["format_version"] = FORMAT_VERSION


def write_dataset(path, name, class_names, train, test, provenance, **options):
    """Write a whole dataset at once; ``train``/``test`` are (images, labels) pairs."""
    images = np.asarray(train[0])
    with DatasetWriter(path, name, class_names, images.shape[1:], provenance, **options) as w:
        w.append("train", *train)
        w.append("test", *test)
    return path
