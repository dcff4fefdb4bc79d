"""HDF5 checkpoints, written atomically.

A checkpoint is a tree of nested dicts saved as one HDF5 file::

    save_checkpoint("run/ckpt.h5",
                    config={"model": "convnet", "lr": 0.1},   # JSON text attribute
                    layout=model.layout,                       # a ParamLayout
                    weights={"w": w},                          # flat vectors
                    optimizer={"m": m, "v": v, "t": 12},
                    rng=np.random.default_rng(0),              # Generator state
                    step=1200)
    ck = load_checkpoint("run/ckpt.h5")
    ck["weights"]["w"], ck["optimizer"]["t"], ck["rng"].random()

How values are stored (and what :func:`load_checkpoint` gives back):

==========================  ===============================  =====================
value                       HDF5                             loaded as
==========================  ===============================  =====================
dict                        group                            dict
NumPy / CuPy array          dataset (CuPy copied to host)    NumPy array
int, float, bool, str       attribute                        int, float, bool, str
list, tuple, None           JSON text attribute              list, None
``numpy.random.Generator``  JSON of ``bit_generator.state``  Generator (restored)
``ParamLayout``             group of name/kind/shape tables  ParamLayout
top-level ``config``        JSON text attribute ``config``   dict
==========================  ===============================  =====================

Writes are atomic: the file is written under a temporary name in the same
directory, flushed, fsync'ed and then moved over the destination with
``os.replace``, so a run killed mid-write leaves the previous checkpoint
intact.  On an exception (Ctrl-C included) the temporary file is removed; a
hard kill (SIGKILL, power loss) can leave a stray ``.<name>.*.tmp`` beside
it.  :func:`write_json` writes JSON files (a run's config and summary) the same
way.  Reading a corrupt or truncated file
raises :class:`hfmeta.errors.UserError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile

import h5py
import numpy as np

from hfmeta import backend
from hfmeta.errors import UserError
from hfmeta.params import ParamLayout

FORMAT_VERSION = 1
_ENCODING_ATTR = "_encoding"      # per group: JSON {key: "json" | "rng" | "layout"}
_ROOT_ATTRS = ("format_version", "kind", "config")   # reserved at the top level


@contextlib.contextmanager
def atomic_replace(path):
    """Yield a temporary path in ``path``'s directory; on normal exit the file
    written there is fsync'ed and renamed to ``path`` (the destination changes
    in one step, or not at all); on any exception it is removed and the
    destination untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp made it private (0600)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError):               # a full disk, a vanished folder, ...
            raise UserError(f"cannot write {path}: {e.strerror or e}; the previous file, if "
                            f"any, is unchanged") from None
        raise
    _fsync_directory(directory)


@contextlib.contextmanager
def atomic_hdf5(path):
    """Open ``path`` for writing as an HDF5 file that appears only when complete.

    The ``h5py.File`` is built in memory and its bytes written with plain Python I/O
    (:func:`atomic_replace`): a full disk is then an ``OSError`` like any other,
    where HDF5 writing to it directly fails in its own layers (RuntimeErrors while
    flushing and closing, and a crash at exit).  A checkpoint is held twice in memory
    for a moment (weights and optimizer state: tens of MB for the zoo's nets)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with atomic_replace(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(buffer.getbuffer())


def read_jsonl(path, is_record, what):
    """``[(line, record)]`` of a JSON-lines log (a run's metrics, a meta-training log).
    A last line cut short (a process killed while writing it) is left out; any other
    line that does not parse or fails ``is_record`` is a :class:`UserError` naming
    the file, the line and ``what`` it should have been."""
    with open(path) as f:
        lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            record = None
        if not is_record(record):
            raise UserError(f"{path}, line {number}: not {what}")
        out.append((line, record))
    return out


def rewrite_lines(path, lines):
    """Replace a log's content by ``lines`` atomically (:func:`atomic_replace`)."""
    with atomic_replace(path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(lines)


def write_json(path, obj, **dump_options):
    """``json.dump(obj)`` to ``path`` atomically (:func:`atomic_replace`): a run's
    config.json or summary.json is either the old one or the new one, never half.
    Strict JSON: an infinite or NaN float (a diverged run's figures) is written as
    null, not as the ``NaN`` that other JSON readers refuse."""
    with atomic_replace(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(finite_or_null(obj), f, allow_nan=False, **dump_options)


def finite_or_null(obj):
    """``obj`` with every non-finite float (NumPy's too), in dicts and lists at any
    depth, as None."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory):
    """Make the rename durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------- writing

def save_checkpoint(path, **groups):
    """Write the nested dicts ``groups`` to ``path`` atomically (see module doc)."""
    with atomic_hdf5(path) as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["kind"] = "hfmeta checkpoint"
        config = groups.pop("config", None)
        reserved = set(groups) & set(_ROOT_ATTRS)
        if reserved:
            raise ValueError(f"checkpoint keys {sorted(reserved)} are reserved")
        if config is not None:
            f.attrs["config"] = json.dumps(config, sort_keys=True)
        _write_group(f, groups)


def _write_group(group, tree):
    encoding = {}
    for key, value in tree.items():
        if not isinstance(key, str) or "/" in key or key == _ENCODING_ATTR:
            raise ValueError(f"checkpoint key {key!r} must be a string without '/'")
        if isinstance(value, dict):
            _write_group(group.create_group(key), value)
        elif isinstance(value, ParamLayout):
            _write_layout(group.create_group(key), value)
            encoding[key] = "layout"
        elif isinstance(value, np.random.Generator):
            group.attrs[key] = json.dumps(value.bit_generator.state)
            encoding[key] = "rng"
        elif isinstance(value, (bool, int, float, str, np.generic)):
            group.attrs[key] = value
        elif value is None or isinstance(value, (list, tuple)):
            group.attrs[key] = json.dumps(value)
            encoding[key] = "json"
        else:  # an array on either device
            group.create_dataset(key, data=backend.asnumpy(value))
    if encoding:
        group.attrs[_ENCODING_ATTR] = json.dumps(encoding, sort_keys=True)


def _write_layout(group, layout):
    """A ParamLayout as a small table in flat-vector order."""
    specs = layout.specs
    strings = h5py.string_dtype()
    group.create_dataset("name", data=[s.name for s in specs], dtype=strings)
    group.create_dataset("kind", data=[s.kind for s in specs], dtype=strings)
    group.create_dataset("layer", data=[s.layer for s in specs], dtype=strings)
    group.create_dataset("offset", data=np.array([s.offset for s in specs], dtype=np.int64))
    group.create_dataset("size", data=np.array([s.size for s in specs], dtype=np.int64))
    group.attrs["shapes"] = json.dumps([list(s.shape) for s in specs])
    group.attrs["total_size"] = layout.size


# ----------------------------------------------------------------- reading

def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` into nested dicts."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file")
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("format_version")
            if version is None:
                raise UserError(f"{path} is not an hfmeta checkpoint (no format_version)")
            if int(version) > FORMAT_VERSION:
                raise UserError(f"{path} has checkpoint format {int(version)}; this hfmeta "
                                f"reads up to {FORMAT_VERSION}")
            tree = _read_group(f)
            if "config" in f.attrs:
                tree["config"] = json.loads(f.attrs["config"])
            return tree
    except UserError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: corrupt or truncated HDF5 "
                        f"file ({reason})") from None


def _read_group(group):
    encoding = json.loads(group.attrs.get(_ENCODING_ATTR, "{}"))
    tree = {}
    for key, item in group.items():
        if encoding.get(key) == "layout":
            tree[key] = _read_layout(item)
        elif isinstance(item, h5py.Group):
            tree[key] = _read_group(item)
        else:
            tree[key] = item[()]
    for key, value in group.attrs.items():
        if key == _ENCODING_ATTR or (group.name == "/" and key in _ROOT_ATTRS):
            continue
        how = encoding.get(key)
        if how == "json":
            tree[key] = json.loads(value)
        elif how == "rng":
            tree[key] = _generator_from_state(json.loads(value))
        else:
            tree[key] = _python_scalar(value)
    return tree


def _read_layout(group):
    shapes = json.loads(group.attrs["shapes"])
    names = [s.decode() if isinstance(s, bytes) else s for s in group["name"][()]]
    kinds = [s.decode() if isinstance(s, bytes) else s for s in group["kind"][()]]
    layers = [s.decode() if isinstance(s, bytes) else s for s in group["layer"][()]]
    layout = ParamLayout(zip(names, shapes, kinds, layers))
    if [s.offset for s in layout.specs] != [int(o) for o in group["offset"][()]]:
        raise ValueError("stored layout offsets do not match its shapes")
    return layout


def _generator_from_state(state):
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _python_scalar(value):
    """h5py gives back NumPy scalars; hand plain Python values to the caller."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
