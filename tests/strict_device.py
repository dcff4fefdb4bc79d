"""A strict stand-in for CuPy on the CPU, to test hfmeta's device hygiene without a GPU.

hfmeta runs one code path on NumPy and CuPy (:mod:`hfmeta.backend`); what
breaks on a real GPU is almost always *host/device mixing*: a NumPy array
(a table, a mask, an index) combined with a device array, a ``np.`` function
applied to device data, an implicit conversion to the host, or a host scalar
type that silently changes a dtype.  CuPy refuses the first three with a
TypeError ("Implicit conversion to a NumPy array is not allowed").  This
module mimics exactly those refusals with NumPy underneath:

* :class:`DeviceArray` (a NumPy subclass) is the "device" array.  Ufuncs that
  mix it with a host array of ndim > 0 raise; ``np.<function>(device_array)``
  raises; ``np.asarray(device_array)`` raises (``asnumpy`` is the way out).
  Host scalars and 0-d arrays are allowed, as in CuPy.
* :data:`module` is the "cupy" module: every NumPy function called through it
  takes and returns device arrays; ``asarray`` copies host data onto the
  device; reductions return 0-d device arrays, not NumPy scalars, as CuPy's do.

The arithmetic is NumPy's, so a run on this device must give the CPU run's
numbers.  Use it through the ``strict_device`` fixture of
``tests/test_device_hygiene.py``, which swaps it in as ``backend._cupy``.
"""
from __future__ import annotations

import threading
import types

import numpy as np

_state = threading.local()


def _inside() -> bool:
    """True while a function of :data:`module` runs (it may use NumPy freely)."""
    return getattr(_state, "depth", 0) > 0


class DeviceArray(np.ndarray):
    """An array "on the device": NumPy storage, CuPy's refusals."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ()) or ()
        if not _inside():
            for x in inputs + tuple(outs):
                if isinstance(x, np.ndarray) and not isinstance(x, DeviceArray) and x.ndim > 0:
                    raise TypeError(f"host array {x.shape} {x.dtype} mixed with device arrays "
                                    f"in {ufunc.__name__}")
        args = [_host_view(x) for x in inputs]
        if outs:
            kwargs["out"] = tuple(_host_view(o) for o in outs)
        return _to_device(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func, types_, args, kwargs):
        if not _inside():
            raise TypeError(f"np.{func.__name__} applied to a device array")
        return super().__array_function__(func, types_, args, kwargs)

    def __array__(self, dtype=None, copy=None):
        if not _inside():
            raise TypeError("Implicit conversion to a NumPy array is not allowed")
        a = self.view(np.ndarray)
        return a if dtype is None else a.astype(dtype)


def _host_view(x):
    return x.view(np.ndarray) if isinstance(x, DeviceArray) else x


def _to_device(r):
    """Results of device work are device arrays (NumPy scalars become 0-d arrays)."""
    if isinstance(r, (tuple, list)):
        return type(r)(_to_device(x) for x in r)
    if isinstance(r, np.ndarray) and not isinstance(r, DeviceArray):
        return r.view(DeviceArray)
    if isinstance(r, np.generic):
        return np.asarray(r).view(DeviceArray)
    return r


def _unwrap(x):
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(y) for y in x)
    return _host_view(x)


def _on_device(f):
    def run(*args, **kwargs):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return _to_device(f(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
        finally:
            _state.depth -= 1
    return run


class _Module(types.ModuleType):
    """NumPy's namespace, every function running "on the device"."""

    def __init__(self, name, base):
        super().__init__(name)
        self._base = base

    def __getattr__(self, name):
        obj = getattr(self._base, name)
        return _on_device(obj) if callable(obj) and not isinstance(obj, type) else obj


def _asnumpy(x):
    return x.view(np.ndarray).copy() if isinstance(x, DeviceArray) else np.asarray(x)


class _MemoryPool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


module = _Module("strict_device", np)
module.fft = _Module("strict_device.fft", np.fft)
module.linalg = _Module("strict_device.linalg", np.linalg)
module.lib = types.SimpleNamespace(
    stride_tricks=_Module("strict_device.lib.stride_tricks", np.lib.stride_tricks))
module.ndarray = DeviceArray
module.get_array_module = lambda *arrays: (
    module if any(isinstance(a, DeviceArray) for a in arrays) else np)
module.asnumpy = _asnumpy
module.asarray = _on_device(lambda a, dtype=None, order=None:
                            np.array(a, dtype=dtype, order=order or "K", copy=True))
module.array = module.asarray
module.get_default_memory_pool = _MemoryPool
module.cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
    Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)))
