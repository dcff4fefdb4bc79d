"""HDF5 checkpoints: round trip, atomic writes, corrupt files."""
import json
import os

import numpy as np
import pytest

from hfmeta import storage
from hfmeta.errors import UserError
from hfmeta.params import ParamLayout


def _layout():
    return ParamLayout([("fc1.weight", (4, 3), "fc.weight", "fc1"),
                        ("conv1.weight", (2, 1, 3, 3), "conv.weight", "conv1"),
                        ("fc1.bias", (4,), "fc.bias", "fc1"),
                        ("bn1.gamma", (2,), "bn.gamma", "bn1")])


def _contents(rng):
    gen = np.random.default_rng(7)
    gen.random(5)                              # advance it: the state is not fresh
    return dict(
        config={"model": "convnet", "lr": 0.1, "milestones": [1, 2], "note": None},
        layout=_layout(),
        weights={"w": rng.standard_normal(58).astype(np.float32)},
        optimizer={"m": rng.standard_normal(58), "t": 12, "name": "adam",
                   "betas": (0.9, 0.999), "nested": {"flag": True, "eps": 1e-8}},
        bn_state={"bn1": {"mean": rng.standard_normal(2), "var": rng.random(2)}},
        rng=gen,
        step=1200, epoch=3, samples_seen=153600)


def test_round_trip(tmp_path, rng):
    path = tmp_path / "ckpt.h5"
    saved = _contents(rng)
    gen_copy = np.random.default_rng(7)
    gen_copy.random(5)
    storage.save_checkpoint(path, **saved)
    ck = storage.load_checkpoint(path)

    assert ck["config"] == saved["config"]
    np.testing.assert_array_equal(ck["weights"]["w"], saved["weights"]["w"])
    assert ck["weights"]["w"].dtype == np.float32
    np.testing.assert_array_equal(ck["optimizer"]["m"], saved["optimizer"]["m"])
    assert ck["optimizer"]["t"] == 12 and type(ck["optimizer"]["t"]) is int
    assert ck["optimizer"]["name"] == "adam"
    assert ck["optimizer"]["betas"] == [0.9, 0.999]
    assert ck["optimizer"]["nested"] == {"flag": True, "eps": 1e-8}
    np.testing.assert_array_equal(ck["bn_state"]["bn1"]["var"], saved["bn_state"]["bn1"]["var"])
    assert (ck["step"], ck["epoch"], ck["samples_seen"]) == (1200, 3, 153600)
    # the generator continues exactly where the saved one stood
    np.testing.assert_array_equal(ck["rng"].random(4), gen_copy.random(4))
    layout = ck["layout"]
    assert [(s.name, s.shape, s.kind, s.layer, s.offset) for s in layout.specs] == \
        [(s.name, s.shape, s.kind, s.layer, s.offset) for s in _layout().specs]
    assert layout.size == _layout().size


def test_reserved_top_level_key(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        storage.save_checkpoint(tmp_path / "c.h5", kind="x")
    assert os.listdir(tmp_path) == []


class _Boom:
    """An array-like whose conversion fails: a crash in the middle of writing."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("simulated crash while writing")


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, rng):
    path = tmp_path / "ckpt.h5"
    storage.save_checkpoint(path, weights={"w": np.arange(5.0)}, step=1)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated crash"):
        storage.save_checkpoint(path, weights={"w": np.ones(5), "z": _Boom()}, step=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.h5"]          # no stray temporary file
    ck = storage.load_checkpoint(path)
    assert ck["step"] == 1
    np.testing.assert_array_equal(ck["weights"]["w"], np.arange(5.0))


def test_json_written_atomically(tmp_path):
    """config.json / summary.json: a write that fails half-way (here json.dump meets an
    object it cannot encode after writing part of the text) leaves the old file whole."""
    path = tmp_path / "summary.json"
    storage.write_json(path, {"step": 1}, indent=2)
    before = path.read_text()
    with pytest.raises(TypeError):
        storage.write_json(path, {"step": 2, "bad": object()}, indent=2)
    assert path.read_text() == before and sorted(os.listdir(tmp_path)) == ["summary.json"]
    storage.write_json(path, {"step": 3})
    assert path.read_text() == '{"step": 3}'


def test_a_failing_disk_is_one_user_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    """A full disk (ENOSPC) while a checkpoint is written: HDF5 builds the file in
    memory, so the failure is Python I/O's, reported as one line naming the file."""
    path = tmp_path / "ckpt.h5"
    storage.save_checkpoint(path, step=1)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(storage.os, "fsync", no_space)
    with pytest.raises(UserError, match=f"cannot write {path}: No space left on device"):
        storage.save_checkpoint(path, step=2)
    with pytest.raises(UserError, match="No space left"):
        storage.write_json(tmp_path / "summary.json", {"step": 2})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ckpt.h5"]


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "ckpt.h5"
    storage.save_checkpoint(path, step=1)
    storage.save_checkpoint(path, step=2)
    assert storage.load_checkpoint(path)["step"] == 2
    assert os.listdir(tmp_path) == ["ckpt.h5"]


def test_corrupt_file_raises_user_error(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"this is not an HDF5 file at all" * 10)
    with pytest.raises(UserError) as e:
        storage.load_checkpoint(path)
    assert "\n" not in str(e.value) and "bad.h5" in str(e.value)


def test_truncated_file_raises_user_error(tmp_path, rng):
    path = tmp_path / "ckpt.h5"
    storage.save_checkpoint(path, weights={"w": rng.standard_normal(20000)}, step=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        storage.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_missing_file_and_foreign_hdf5(tmp_path):
    import h5py
    with pytest.raises(UserError, match="does not exist"):
        storage.load_checkpoint(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match="not an hfmeta checkpoint"):
        storage.load_checkpoint(tmp_path / "other.h5")


def test_cupy_arrays_go_to_host(gpu, tmp_path):
    from hfmeta import backend
    w = backend.to_device(np.arange(6.0), "gpu")
    storage.save_checkpoint(tmp_path / "g.h5", weights={"w": w})
    ck = storage.load_checkpoint(tmp_path / "g.h5")
    assert isinstance(ck["weights"]["w"], np.ndarray)
    np.testing.assert_array_equal(ck["weights"]["w"], np.arange(6.0))


def test_write_json_is_strict_json(tmp_path):
    """A diverged run's inf/NaN figures are written as null (json.dump's NaN is not JSON)."""
    from hfmeta.storage import write_json
    path = tmp_path / "s.json"
    write_json(str(path), {"loss": float("nan"), "acc": np.float32("inf"), "ok": 0.5,
                           "curve": [1.0, float("-inf")], "nested": {"x": np.float64("nan")}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "acc": None, "ok": 0.5, "curve": [1.0, None],
                                "nested": {"x": None}}


def test_bools_load_as_python_bools(tmp_path):
    """h5py gives back numpy.bool_; a checkpoint must give plain bool (json.dumps of
    numpy.bool_ fails, and `is True` checks would break), at any depth."""
    storage.save_checkpoint(tmp_path / "c.h5", flag=True, nested={"off": False, "deep": {"on": True}})
    ck = storage.load_checkpoint(tmp_path / "c.h5")
    for value, want in ((ck["flag"], True), (ck["nested"]["off"], False),
                        (ck["nested"]["deep"]["on"], True)):
        assert type(value) is bool and value is want


def test_none_round_trips_as_none(tmp_path):
    """None is stored as JSON null and loaded as None, not as the string 'None'."""
    storage.save_checkpoint(tmp_path / "c.h5", note=None, nested={"f_prev": None, "t": 1})
    ck = storage.load_checkpoint(tmp_path / "c.h5")
    assert ck["note"] is None and ck["nested"]["f_prev"] is None and ck["nested"]["t"] == 1


def test_written_files_get_the_umask_mode_not_mkstemp_s_0600(tmp_path):
    """The temporary file of an atomic write is private (0600); the finished checkpoint
    or JSON file must have the mode a plain open() would give, 0o666 & ~umask."""
    old = os.umask(0o022)
    try:
        storage.save_checkpoint(tmp_path / "c.h5", step=1)
        storage.write_json(tmp_path / "s.json", {"step": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "c.h5").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o644
