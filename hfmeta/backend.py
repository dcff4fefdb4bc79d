"""Array-module dispatch: one code path for NumPy (CPU) and CuPy (GPU).

Every numeric function in hfmeta takes its array module from its inputs::

    xp = get_array_module(x)      # numpy or cupy
    y = xp.maximum(x, 0)

and never imports CuPy itself.  CuPy is optional: importing hfmeta without it
works, and asking for the GPU without it raises :class:`BackendError` with a
one-line message (the CLI turns it into a clean exit).

Weights are initialised on the host with a seeded ``numpy.random.Generator``
and then moved with :func:`to_device`, so CPU and GPU runs start from
identical numbers.
"""
from __future__ import annotations

import numpy as np

try:  # CuPy is an optional extra: ``pip install -e .[gpu]``
    import cupy as _cupy
except Exception:  # ImportError, or a broken CUDA install
    _cupy = None

DEVICES = ("cpu", "gpu")


class BackendError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def xp_for(device: str):
    """The array module for a device name (``"cpu"`` or ``"gpu"``)."""
    if device == "cpu":
        return np
    if device == "gpu":
        if not cupy_available():
            raise BackendError(
                "--device gpu needs CuPy and a CUDA device "
                "(pip install -e .[gpu]); none was found")
        return _cupy
    raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


def device_of(x) -> str:
    """``"gpu"`` for a CuPy array, ``"cpu"`` otherwise."""
    return "gpu" if get_array_module(x) is not np else "cpu"


def to_device(x, device: str):
    """Copy a host or device array onto ``device`` (no copy if already there)."""
    xp = xp_for(device)
    if xp is np:
        return asnumpy(x)
    return xp.asarray(x)


def asnumpy(x):
    """A NumPy copy (or view) of ``x`` on the host, whatever its device."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def accumulate(total, term):
    """``total += term`` where ``total`` is ``None`` (zero) before the first term: a sum
    of fresh arrays built in place in the first one.  ``total`` must be the caller's
    own scratch (it is overwritten); for operands that may be shared, use
    :func:`add_optional`."""
    if total is None:
        return term
    total += term
    return total


def add_optional(a, b):
    """``a + b`` where ``None`` means zero (no new array when one side is ``None``).

    Directions and cotangents are ``None`` where they are known to be zero
    (the R-op before the first parameter, a missing output cotangent).
    """
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def keep_freed_memory(threshold_bytes: int = 1 << 32) -> bool:
    """Ask glibc's malloc to recycle large freed blocks instead of returning them.

    By default glibc serves every allocation above ~32 MB with a fresh
    ``mmap`` and ``munmap`` s it on free, so each forward pass pays page
    faults on first touch of its im2col columns (210 MB for convnet's second
    layer at batch 128): forward+backward of convnet then took 2.3 s instead
    of 0.7 s on the development machine.  Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` keeps that memory in the heap for reuse (the same as
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
    environment).  Process-wide, so the CLI calls it and the library does not;
    a no-op (returning False) where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    threshold = min(int(threshold_bytes), 2 ** 31 - 1)      # mallopt takes an int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                       2 ** 31 - 1))


def to_float(x) -> float:
    """A Python float from a 0-d array; on CuPy this is a host sync."""
    return float(x)


def check_dtype(dtype) -> np.dtype:
    """Accept ``"float32"``/``"float64"`` (or the NumPy types) and nothing else."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
