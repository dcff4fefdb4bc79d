"""hfmeta.backend.check_dtype: the float types the layers and optimizers are written for."""
import numpy as np
import pytest

from hfmeta.backend import check_dtype


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.float64])
def test_float32_and_float64_are_accepted(dtype):
    assert check_dtype(dtype) == np.dtype(dtype)


@pytest.mark.parametrize("dtype", ["float16", np.float16, "int32", "complex64"])
def test_other_dtypes_are_refused(dtype):
    """Only the two float types the library is written for: anything else is refused at
    once rather than failing (or silently losing precision) deep inside a step."""
    with pytest.raises(ValueError, match="float32 or float64"):
        check_dtype(dtype)
