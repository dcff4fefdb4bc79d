"""HDF5-backed datasets, the paper's splits, and resumable mini-batches.

    ds = open_dataset("mnist5k")                 # a name or a path to an .h5 file
    ds.classes, ds.image_shape, ds.mean, ds.std, ds.sizes
    it = ds.batches("target", batch_size=128, seed=0, dtype="float32", device="cpu")
    for x, y in it: ...                          # x (n, c, h, w) normalised, y (n,) int64
    state = it.state_dict()                      # save it with the checkpoint ...
    it = ds.batches("target", 128, seed=0, start_step=state["step"])   # ... and resume

Splits (MLHF paper, Chen et al. 2019, section "Experiments"): the optimizer is
meta-trained on the first 3/5 of the training set (``"meta"``), the target
net is trained on the remaining 2/5 (``"target"``), test accuracy is reported
on the test set (``"test"``); ``"train"`` is the whole training set.

Batches of a split too large for memory (see :class:`Split`; smaller splits
are read into RAM once) are streamed from the file: each one is a read of a
sorted index set (h5py's fancy reads need increasing indices), put back into
the shuffled order in memory.  The order of epoch e is ``default_rng([seed, e])``'s
permutation and the augmentation of step k of epoch e draws from
``default_rng([seed, e, k, 1])``, so batch number k is a pure function of
(seed, k): a run resumed at step k sees exactly the batches an uninterrupted
run would.  Pixels are normalised per channel, ``x = (u/255 - mean_c)/std_c``,
on the device after the uint8 batch is moved there.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from hfmeta import backend
from hfmeta.datasets.registry import resolve
from hfmeta.errors import UserError

SPLITS = ("train", "meta", "target", "test")
CHUNK_CACHE_BYTES = 64 << 20          # h5py chunk cache per open dataset file
IN_MEMORY_BYTES = 512 << 20           # splits up to this size are read into RAM once
_REQUIRED = ("train/images", "train/labels", "test/images", "test/labels")
_REQUIRED_ATTRS = ("name", "classes", "mean", "std", "format_version")


def open_dataset(name_or_path):
    """Open a prepared dataset by registered name (e.g. ``"mnist5k"``) or file path."""
    return Dataset(resolve(name_or_path))


class Dataset:
    """A dataset file in the hfmeta HDF5 layout (see ``hfmeta.datasets.hdf5``)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise UserError(f"{self.path} is a folder, not a dataset file")
        if not os.path.isfile(self.path):
            raise UserError(f"dataset file {self.path} does not exist")
        try:
            self.file = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        except OSError as e:
            raise UserError(f"{self.path}: not a readable HDF5 file "
                            f"({str(e).splitlines()[0]})") from None
        try:
            self._read_header()
        except Exception:
            self.file.close()
            raise

    def _read_header(self):
        if self.file.attrs.get("kind") == "hfmeta checkpoint":
            raise UserError(f"{self.path} is an hfmeta checkpoint, not a dataset")
        missing = [k for k in _REQUIRED if k not in self.file]
        missing += [f"attribute {a}" for a in _REQUIRED_ATTRS if a not in self.file.attrs]
        if missing:
            raise UserError(f"{self.path}: not an hfmeta dataset (missing {', '.join(missing)})")
        attrs = self.file.attrs
        self.name = str(attrs["name"])
        self.classes = int(attrs["classes"])
        names = attrs.get("class_names")
        self.class_names = [str(c) for c in names] if names is not None else \
            [str(c) for c in range(self.classes)]
        self.mean = np.asarray(attrs["mean"], dtype=np.float64).reshape(-1)
        self.std = np.asarray(attrs["std"], dtype=np.float64).reshape(-1)
        self.provenance = json.loads(attrs.get("provenance", "{}"))
        self.format_version = int(attrs["format_version"])
        images = self.file["train/images"]
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        for part in ("train", "test"):
            im, lab = self.file[part]["images"], self.file[part]["labels"]
            if im.dtype != np.uint8 or im.ndim != 4 or im.shape[1:] != self.image_shape:
                raise UserError(f"{self.path}: /{part}/images must be uint8 (n,)+"
                                f"{self.image_shape}, is {im.dtype} {im.shape}")
            if lab.shape != im.shape[:1]:
                raise UserError(f"{self.path}: /{part}/labels has shape {lab.shape}, "
                                f"expected ({im.shape[0]},)")
        if self.mean.shape != (self.image_shape[0],) or self.std.shape != self.mean.shape:
            raise UserError(f"{self.path}: mean/std must have one value per channel")
        n = images.shape[0]
        self._ranges = {"train": ("train", 0, n), "meta": ("train", 0, 3 * n // 5),
                        "target": ("train", 3 * n // 5, n),
                        "test": ("test", 0, self.file["test/images"].shape[0])}
        self.sizes = {s: stop - start for s, (_, start, stop) in self._ranges.items()}

    @property
    def default_augment(self):
        """Pad-4 crop + flip is the usual augmentation for CIFAR; off for digits."""
        return self.name.startswith("cifar")

    def split(self, name, in_memory=None):
        """The :class:`Split` called ``name`` (one of ``SPLITS``)."""
        if name not in self._ranges:
            raise UserError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        part, start, stop = self._ranges[name]
        return Split(self, name, self.file[part], start, stop, in_memory)

    def batches(self, split, batch_size, in_memory=None, **options):
        """A :class:`BatchIterator` over ``split`` (options as in BatchIterator)."""
        return BatchIterator(self.split(split, in_memory), batch_size, **options)

    def load(self, split, dtype="float32", device="cpu"):
        """A whole (small) split in memory, normalised: ``(x, y)`` on ``device``."""
        s = self.split(split, in_memory=False)
        images, labels = s.read_range(0, s.size)
        return self.normalise(images, dtype, device), backend.to_device(labels, device)

    def normalise(self, images, dtype="float32", device="cpu"):
        """uint8 (n, c, h, w) -> ``(u/255 - mean_c) / std_c`` as ``dtype`` on ``device``."""
        dtype = backend.check_dtype(dtype)
        x = backend.to_device(images, device)
        xp = backend.get_array_module(x)
        scale = xp.asarray((1.0 / (255.0 * self.std)).reshape(1, -1, 1, 1), dtype=dtype)
        shift = xp.asarray((self.mean / self.std).reshape(1, -1, 1, 1), dtype=dtype)
        return x.astype(dtype) * scale - shift

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Dataset({self.name!r}, classes={self.classes}, image_shape="
                f"{self.image_shape}, sizes={self.sizes}, path={self.path!r})")


class Split:
    """Rows ``[start, stop)`` of one group (``/train`` or ``/test``) of the file.

    Labels are small and read once; images are read on demand, or kept in host
    memory when ``in_memory`` (the default ``None`` does so for splits up to
    ``IN_MEMORY_BYTES``, which holds MNIST and CIFAR-10 but not ImageNet32).
    """

    def __init__(self, dataset, name, group, start, stop, in_memory=None):
        self.dataset, self.name = dataset, name
        self.images = group["images"]
        self.start, self.stop = start, stop
        self.size = stop - start
        self.labels = group["labels"][start:stop]
        row_bytes = int(np.prod(self.images.shape[1:]))
        if in_memory is None:
            in_memory = self.size * row_bytes <= IN_MEMORY_BYTES
        self._cached = self.images[start:stop] if in_memory else None
        self._run_gap = (self.images.chunks or (1,))[0]

    def read_range(self, begin, end):
        """Rows ``begin..end-1`` of the split (one contiguous read)."""
        if self._cached is not None:
            images = self._cached[begin:end]
        else:
            images = self.images[self.start + begin:self.start + end]
        return images, self.labels[begin:end]

    def read(self, index):
        """Rows ``index`` (any order, no repeats) of the split, in that order.

        From the file, the sorted indices are cut into runs wherever two are
        more than a chunk apart, and each run is one contiguous read (h5py's
        own fancy indexing is some 50 times slower).
        """
        index = np.asarray(index, dtype=np.int64)
        if self._cached is not None:
            return self._cached[index], self.labels[index]
        order = np.argsort(index, kind="stable")
        ascending = index[order]
        cuts = np.flatnonzero(np.diff(ascending) > self._run_gap) + 1
        images = np.empty((index.size,) + self.images.shape[1:], dtype=np.uint8)
        for run in np.split(np.arange(index.size), cuts):
            first, last = ascending[run[0]], ascending[run[-1]]
            block = self.images[self.start + first:self.start + last + 1]
            images[order[run]] = block[ascending[run] - first]
        return images, self.labels[index]


def random_crop_flip(images, rng, pad=4):
    """Pad-``pad`` random crop and random horizontal flip of uint8 (n, c, h, w) images.

    The usual CIFAR augmentation (He et al. 2016): zero-pad by ``pad`` pixels,
    crop a random h×w window, mirror left-right with probability 1/2.
    """
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    out = windows[np.arange(n), :, dy, dx]                  # (n, c, h, w)
    flip = rng.random(n) < 0.5
    out[flip] = out[flip][..., ::-1]
    return np.ascontiguousarray(out)


class BatchIterator:
    """Endless (or ``epochs``-long) stream of shuffled mini-batches of one split.

    ``batch_size`` examples per step, ``steps_per_epoch = size // batch_size``
    (``drop_last``; otherwise the last batch of an epoch is smaller).  The
    position is the global step; ``epoch`` and ``step_in_epoch`` derive from it.
    """

    def __init__(self, split, batch_size, seed=0, shuffle=True, augment=False,
                 dtype="float32", device="cpu", drop_last=True, start_step=0, epochs=None):
        self.split = split
        self.batch_size = int(batch_size)
        if self.batch_size <= 0:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.seed, self.shuffle, self.augment = int(seed), bool(shuffle), bool(augment)
        self.dtype, self.device = backend.check_dtype(dtype), device
        self.drop_last, self.epochs = drop_last, epochs
        full, rest = divmod(split.size, self.batch_size)
        self.steps_per_epoch = full if drop_last else full + (rest > 0)
        if self.steps_per_epoch == 0:
            raise UserError(f"split {split.name!r} has {split.size} examples, fewer than "
                            f"one batch of {self.batch_size}")
        self.step = int(start_step)
        self._order_epoch, self._order = None, None

    @property
    def epoch(self):
        return self.step // self.steps_per_epoch

    @property
    def step_in_epoch(self):
        return self.step % self.steps_per_epoch

    @property
    def samples_seen(self):
        return self.step * self.batch_size

    def epoch_order(self, epoch):
        """The permutation of the split's rows used in ``epoch``."""
        if self._order_epoch != epoch:
            n = self.split.size
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(n)
                           if self.shuffle else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def batch_at(self, step):
        """``(x, y)`` of global step ``step``: a pure function of (seed, step)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        index = self.epoch_order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        images, labels = self.split.read(index)
        if self.augment:
            images = random_crop_flip(images, np.random.default_rng([self.seed, epoch, k, 1]))
        x = self.split.dataset.normalise(images, self.dtype, self.device)
        return x, backend.to_device(labels, self.device)

    def __iter__(self):
        return self

    def __next__(self):
        if self.epochs is not None and self.step >= self.epochs * self.steps_per_epoch:
            raise StopIteration
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self):
        """What a checkpoint needs to resume this stream exactly."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                "shuffle": self.shuffle, "augment": self.augment,
                "split": self.split.name, "split_size": self.split.size}

    def load_state_dict(self, state):
        """Continue from a saved position; the stream's settings must match."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "shuffle", "augment", "split", "split_size"):
            if key in state and state[key] != mine[key]:
                raise UserError(f"cannot resume the batch stream: saved {key}={state[key]!r}, "
                                f"now {mine[key]!r}")
        self.step = int(state["step"])
