"""Linearization.first: the curvature sub-batch's linearization sliced from the
whole batch's caches equals a fresh forward on the sub-batch (float64)."""
import numpy as np
import pytest

from hfmeta.layers import (AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear,
                           MaxPool2d, ReLU, Sequential)
from hfmeta.layers.base import lean_caches
from hfmeta.model import Model
from hfmeta.optim.hf import curvature_linearization
from hfmeta.problem import Problem

CLASSES = 3


def _model(name):
    if name == "im2col+fft+shift":
        net = Sequential([("conv1", Conv2d(3, 3, padding=1)), ("relu1", ReLU()),
                          ("pool1", MaxPool2d(2, 2)),
                          ("conv2", Conv2d(4, 3, padding="same", algorithm="fft")), ("relu2", ReLU()),
                          ("conv3", Conv2d(4, 3, padding=(1, 2), algorithm="shift")),
                          ("relu3", ReLU()),
                          ("pool2", MaxPool2d(3, 2, padding=1)), ("flatten", Flatten()),
                          ("fc1", Linear(5)), ("relu4", ReLU()), ("fc2", Linear(CLASSES))])
        shape = (2, 8, 8)
    elif name == "avgpools":
        net = Sequential([("conv1", Conv2d(3, 3, stride=2, padding=1, bias=False)), ("relu1", ReLU()),
                          ("pool1", AvgPool2d(2)), ("pool2", GlobalAvgPool()),
                          ("fc", Linear(CLASSES))])
        shape = (1, 8, 8)
    else:
        raise KeyError(name)
    return Model(net, shape, CLASSES, dtype="float64")


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("name", ["im2col+fft+shift", "avgpools"])
def test_first_equals_a_fresh_sub_batch_forward(name, lean):
    model = _model(name)
    problem = Problem(model)
    rng = np.random.default_rng(0)
    w = model.init(0)
    x = rng.standard_normal((7,) + model.in_shape)
    y = rng.integers(0, CLASSES, 7)
    v = rng.standard_normal(model.num_params)
    with lean_caches(lean):
        _, _, lin = problem.loss_and_grad(w, (x, y))
        fresh = problem.linearize(w, (x[:3], y[:3]))
    problem.gvp(lin, v)                       # the max pools memoise their winners on lin
    sub = lin.first(3)
    np.testing.assert_allclose(sub.output, fresh.output, rtol=1e-13, atol=1e-15)
    for _ in range(2):                        # the second product reuses memoised indices
        np.testing.assert_allclose(problem.gvp(sub, v, 0.1), problem.gvp(fresh, v, 0.1),
                                   rtol=1e-12, atol=1e-14)
    dz = rng.standard_normal(fresh.output.shape)
    np.testing.assert_allclose(sub.backward(dz), fresh.backward(dz), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sub.rop(v), fresh.rop(v), rtol=1e-12, atol=1e-14)
    via_hf = curvature_linearization(problem, w, (x, y), lin, 3)
    np.testing.assert_allclose(via_hf.output, fresh.output, rtol=1e-13, atol=1e-15)


def test_batch_norm_in_train_mode_falls_back_to_a_forward():
    net = Sequential([("conv1", Conv2d(2, 3, padding=1)), ("bn1", BatchNorm()), ("relu1", ReLU()),
                      ("flatten", Flatten()), ("fc", Linear(CLASSES))])
    model = Model(net, (1, 4, 4), CLASSES, dtype="float64")
    problem = Problem(model)
    rng = np.random.default_rng(1)
    w = model.init(0)
    x, y = rng.standard_normal((6, 1, 4, 4)), rng.integers(0, CLASSES, 6)
    _, _, lin = problem.loss_and_grad(w, (x, y))
    with pytest.raises(NotImplementedError):
        lin.first(2)
    sub = curvature_linearization(problem, w, (x, y), lin, 2)    # batch statistics of 2 examples
    np.testing.assert_allclose(sub.output, problem.linearize(w, (x[:2], y[:2])).output, rtol=1e-13)
    assert curvature_linearization(problem, w, (x, y), lin, 6) is lin
