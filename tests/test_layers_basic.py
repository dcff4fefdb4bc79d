"""Linear, ReLU, Flatten and Sequential: finite-difference checks in float64."""
import numpy as np
import pytest

from hfmeta import gradcheck
from hfmeta.layers import Flatten, Linear, ReLU, Sequential


@pytest.mark.parametrize("layer,in_shape", [
    (Linear(5), (4,)),
    (Linear(3, bias=False), (6,)),
    (ReLU(), (3, 4)),
    (Flatten(), (2, 3, 3)),
    (Sequential([("fc1", Linear(6)), ("relu", ReLU()), ("fc2", Linear(3))]), (4,)),
])
def test_layer_derivatives(layer, in_shape):
    results = gradcheck.check_map(repr(layer), *gradcheck.layer_map(layer, in_shape, batch=3))
    gradcheck.assert_all_ok(results)
    assert max(r.rel_error for r in results) < 1e-8


def test_gradcheck_catches_a_wrong_derivative():
    """The checker itself can fail: a backward pass off by a factor is reported."""
    layer = Linear(3)
    f, jvp, vjp, theta0 = gradcheck.layer_map(layer, (4,), batch=2)
    results = gradcheck.check_map("broken", f, jvp, lambda u: 1.01 * vjp(u), theta0)
    by_check = {r.check: r for r in results}
    assert not by_check["backward"].ok and not by_check["adjoint"].ok
    assert by_check["rop"].ok
    with pytest.raises(gradcheck.GradcheckError, match="backward"):
        gradcheck.assert_all_ok(results)


def test_relu_rop_reuses_cache_and_handles_zero_direction():
    layer = ReLU()
    layer.build((3,))
    x = np.array([[-1.0, 2.0, 0.5]])
    y, cache = layer.forward({}, x, True)
    assert layer.rop({}, cache, None, None) is None
    np.testing.assert_array_equal(layer.rop({}, cache, None, np.ones((1, 3))), [[0, 1, 1]])


@pytest.mark.parametrize("layer,in_shape", [
    (Linear(5), (4,)), (Linear(3, bias=False), (6,)), (ReLU(), (3, 4)), (Flatten(), (2, 3, 3)),
    (Sequential([("fc1", Linear(6)), ("relu", ReLU()), ("fc2", Linear(3))]), (4,)),
])
def test_layer_backward_rop(layer, in_shape):
    r = gradcheck.check_backward_rop(repr(layer), layer, in_shape, batch=3)
    assert r.ok, str(r)


def test_composite_child_names_are_unique_and_dot_free():
    """Child names prefix parameter and cache paths, so two children may not share one
    (even parameter-free ones, which the layout's own duplicate check cannot see)."""
    with pytest.raises(ValueError, match="two children named 'relu'"):
        Sequential([("relu", ReLU()), ("fc", Linear(3)), ("relu", ReLU())])
    with pytest.raises(ValueError, match="must not contain"):
        Sequential([("a.b", ReLU())])
