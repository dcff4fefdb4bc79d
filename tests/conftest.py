import numpy as np
import pytest

from hfmeta import backend


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
