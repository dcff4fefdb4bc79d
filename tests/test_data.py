"""Dataset reading, the paper's splits, deterministic and resumable batches."""
import h5py
import numpy as np
import pytest

from hfmeta.data import BatchIterator, open_dataset, random_crop_flip
from hfmeta.datasets.hdf5 import write_dataset
from hfmeta.errors import UserError


@pytest.fixture
def small(tmp_path, rng):
    """A 3-channel dataset with 53 train / 11 test images, labels = row number mod 7."""
    train = rng.integers(0, 256, (53, 3, 6, 5)).astype(np.uint8)
    test = rng.integers(0, 256, (11, 3, 6, 5)).astype(np.uint8)
    path = tmp_path / "small.h5"
    write_dataset(path, "cifar-tiny", [str(i) for i in range(7)],
                  (train, np.arange(53) % 7), (test, np.arange(11) % 7), {"source": "test"})
    return path, train, test


def collect(it, steps):
    return [tuple(np.asarray(a) for a in next(it)) for _ in range(steps)]


def same(batches_a, batches_b):
    return len(batches_a) == len(batches_b) and all(
        np.array_equal(xa, xb) and np.array_equal(ya, yb)
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b))


def test_header_and_splits(small):
    path, train, test = small
    with open_dataset(path) as ds:
        assert ds.classes == 7 and ds.image_shape == (3, 6, 5) and ds.name == "cifar-tiny"
        assert ds.sizes == {"train": 53, "meta": 31, "target": 22, "test": 11}
        np.testing.assert_allclose(ds.mean, (train / 255.0).mean(axis=(0, 2, 3)))
        images, labels = ds.split("target").read_range(0, 22)
        np.testing.assert_array_equal(images, train[31:])
        np.testing.assert_array_equal(labels, np.arange(31, 53) % 7)
        with pytest.raises(UserError, match="unknown split"):
            ds.split("valid")


def test_mnist5k_splits_are_three_fifths_and_two_fifths():
    with open_dataset("mnist5k") as ds:
        assert ds.sizes == {"train": 4000, "meta": 2400, "target": 1600, "test": 1000}
        assert ds.classes == 10 and ds.image_shape == (1, 28, 28)
        x, y = ds.load("train", dtype="float64")
        # normalising with the train statistics gives zero mean, unit std on train
        assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-12
        assert not ds.default_augment


@pytest.mark.parametrize("in_memory", [False, True])
def test_reads_in_any_order(small, in_memory):
    path, train, _ = small
    with open_dataset(path) as ds:
        split = ds.split("train", in_memory=in_memory)
        index = np.array([40, 3, 4, 5, 52, 0, 17, 16])
        images, labels = split.read(index)
        np.testing.assert_array_equal(images, train[index])
        np.testing.assert_array_equal(labels, index % 7)


def test_epoch_is_a_permutation_and_deterministic(small):
    path, train, _ = small
    with open_dataset(path) as ds:
        it = ds.batches("meta", 10, seed=5, drop_last=False, dtype="float64")
        assert it.steps_per_epoch == 4
        labels = np.concatenate([y for _, y in collect(it, 4)])
        assert sorted(labels.tolist()) == sorted((np.arange(31) % 7).tolist())
        assert it.epoch == 1 and it.step_in_epoch == 0
        a = collect(ds.batches("meta", 8, seed=5), 12)
        b = collect(ds.batches("meta", 8, seed=5), 12)
        c = collect(ds.batches("meta", 8, seed=6), 12)
        assert same(a, b) and not same(a, c)
        # epochs differ in order
        assert not np.array_equal(a[0][1], a[3][1])


@pytest.mark.parametrize("augment", [False, True])
def test_resume_reproduces_the_same_batches(small, augment):
    path, _, _ = small
    with open_dataset(path) as ds:
        options = dict(seed=3, augment=augment, in_memory=False)
        reference = collect(ds.batches("train", 7, **options), 20)   # crosses 2 epochs
        first = ds.batches("train", 7, **options)
        collect(first, 9)
        state = first.state_dict()
        resumed = ds.batches("train", 7, **options)
        resumed.load_state_dict(state)
        assert same(collect(resumed, 11), reference[9:])
        assert same(collect(ds.batches("train", 7, start_step=9, **options), 11), reference[9:])
        # streaming from the file and reading from memory give identical batches
        options["in_memory"] = True
        assert same(collect(ds.batches("train", 7, **options), 20), reference)
        with pytest.raises(UserError, match="batch_size"):
            ds.batches("train", 8, **options).load_state_dict(state)


def test_epochs_limit_and_batch_contents(small):
    path, train, _ = small
    with open_dataset(path) as ds:
        it = ds.batches("test", 4, seed=0, shuffle=False, epochs=2, dtype="float64")
        batches = list(it)
        assert len(batches) == 4 and it.samples_seen == 16
        x, y = batches[1]
        assert x.shape == (4, 3, 6, 5) and x.dtype == np.float64 and y.dtype == np.int64
        test = h5py.File(path)["test/images"][4:8]
        expected = (test / 255.0 - ds.mean[None, :, None, None]) / ds.std[None, :, None, None]
        np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)
        with pytest.raises(UserError, match="fewer than one batch"):
            ds.batches("test", 12)


def test_random_crop_flip_matches_definition(rng):
    images = rng.integers(0, 256, (6, 2, 5, 4)).astype(np.uint8)
    out = random_crop_flip(images, np.random.default_rng(9), pad=2)
    draw = np.random.default_rng(9)
    dy, dx = draw.integers(0, 5, size=6), draw.integers(0, 5, size=6)
    flip = draw.random(6) < 0.5
    for i in range(6):
        padded = np.zeros((2, 9, 8), np.uint8)
        padded[:, 2:7, 2:6] = images[i]
        crop = padded[:, dy[i]:dy[i] + 5, dx[i]:dx[i] + 4]
        np.testing.assert_array_equal(out[i], crop[:, :, ::-1] if flip[i] else crop)
    assert flip.any() and not flip.all()


def test_open_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5" * 100)
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        open_dataset(bad)
    partial = tmp_path / "partial.h5"
    with h5py.File(partial, "w") as f:
        f["train/images"] = np.zeros((2, 1, 2, 2), np.uint8)
    with pytest.raises(UserError, match="missing train/labels, test/images"):
        open_dataset(partial)


def test_batch_iterator_rejects_bad_batch_size(small):
    with open_dataset(small[0]) as ds:
        with pytest.raises(UserError):
            BatchIterator(ds.split("train"), 0)


def test_gpu_batches_equal_cpu_batches(gpu, small):
    from hfmeta import backend
    with open_dataset(small[0]) as ds:
        cpu = collect(ds.batches("train", 8, seed=1, augment=True), 3)
        gpu_it = ds.batches("train", 8, seed=1, augment=True, device="gpu")
        for x_cpu, y_cpu in cpu:
            x, y = next(gpu_it)
            assert backend.device_of(x) == "gpu"
            np.testing.assert_allclose(backend.asnumpy(x), x_cpu, rtol=1e-6)
            np.testing.assert_array_equal(backend.asnumpy(y), y_cpu)


def test_augmentation_differs_between_epochs(small):
    """Step k of epoch 1 must get fresh crops/flips, not epoch 0's again (the augmentation
    draws from default_rng([seed, epoch, k, 1])); without shuffling only it differs."""
    path, _, _ = small
    with open_dataset(path) as ds:
        it = ds.batches("train", 8, seed=2, shuffle=False, augment=True, dtype="float64")
        raw, _ = ds.split("train").read(np.arange(8, 16))          # step k=1's rows
        for epoch in (0, 1):
            x, _ = it.batch_at(epoch * it.steps_per_epoch + 1)
            want = random_crop_flip(raw, np.random.default_rng([2, epoch, 1, 1]))
            np.testing.assert_allclose(x, ds.normalise(want, "float64"), rtol=1e-12)
        assert not np.array_equal(it.batch_at(1)[0], it.batch_at(it.steps_per_epoch + 1)[0])


@pytest.mark.parametrize("key, value", [("shuffle", False), ("augment", True),
                                        ("split", "meta"), ("split_size", 52)])
def test_resume_refuses_a_stream_with_other_settings(small, key, value):
    """A saved position belongs to its stream: a different shuffle, augmentation, split or
    split size (a changed dataset file) would silently resume other batches."""
    with open_dataset(small[0]) as ds:
        state = ds.batches("train", 7, seed=3).state_dict()
        assert state[key] != value
        with pytest.raises(UserError, match=key):
            ds.batches("train", 7, seed=3).load_state_dict({**state, key: value})
