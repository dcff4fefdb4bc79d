import numpy as np
import pytest

from hfmeta import backend

import strict_device


def pytest_collection_modifyitems(config, items):
    if backend.cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=[pytest.param("strict", id="strict-device"),
                        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)])
def gpu(request, monkeypatch):
    """What ``"gpu"`` means in a test that takes this fixture: CuPy on a real device
    (marked ``gpu``: skipped without one) and, in every run, the strict stand-in of
    :mod:`strict_device` (NumPy arrays that refuse host/device mixing as CuPy does)."""
    if request.param == "strict":
        monkeypatch.setattr(backend, "_cupy", strict_device.module)
    return request.param
