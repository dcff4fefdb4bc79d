"""The catalogue of derivative checks behind ``hfmeta gradcheck``.

Every layer (with stride/padding variants, batch norm in train and eval mode)
and every zoo model (small inputs, float64) gets the rop, backward and adjoint
checks of :mod:`hfmeta.gradcheck`; layers also get the check of their
``backward_rop`` (second-order terms for exact Hessian-vector products).
Every check runs on the device it is given (``"cpu"`` or ``"gpu"``).
The test suite runs the same catalogue, so the table a student prints is the
one CI keeps green.
"""
from __future__ import annotations

import numpy as np

from . import backend, gradcheck
from .layers import (AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d,
                     PreActBlock, ReLU, Sequential)

#: (name, layer factory, input shape without batch, train mode)
LAYER_CASES = [
    ("linear", lambda: Linear(5), (4,), True),
    ("linear no bias", lambda: Linear(3, bias=False), (6,), True),
    ("relu", lambda: ReLU(), (3, 4, 4), True),
    ("flatten", lambda: Flatten(), (2, 3, 3), True),
    ("conv 3x3 s1 p1", lambda: Conv2d(3, 3, stride=1, padding=1), (2, 6, 6), True),
    ("conv 3x3 s2 p1", lambda: Conv2d(3, 3, stride=2, padding=1), (2, 7, 7), True),
    ("conv 5x5 same", lambda: Conv2d(2, 5, padding="same"), (3, 6, 6), True),
    ("conv 3x3 s2 p0 no bias", lambda: Conv2d(3, 3, stride=2, bias=False), (2, 7, 7), True),
    ("conv 1x1 s2 no bias", lambda: Conv2d(4, 1, stride=2, bias=False), (3, 6, 6), True),
    ("conv 5x5 same fft", lambda: Conv2d(2, 5, padding="same", algorithm="fft"), (3, 6, 6), True),
    ("conv 3x3 p0 fft no bias", lambda: Conv2d(3, 3, bias=False, algorithm="fft"), (2, 7, 7), True),
    ("conv 3x3 p1 shift", lambda: Conv2d(3, 3, padding=1, algorithm="shift"), (2, 6, 5), True),
    ("conv 5x3 p(0,2) shift no bias",
     lambda: Conv2d(2, (5, 3), padding=(0, 2), bias=False, algorithm="shift"), (3, 7, 6), True),
    ("maxpool 2/2", lambda: MaxPool2d(2, 2), (2, 6, 6), True),
    ("maxpool 3/2 p1", lambda: MaxPool2d(3, 2, padding=1), (2, 7, 7), True),
    ("avgpool 2/2", lambda: AvgPool2d(2, 2), (2, 6, 6), True),
    ("avgpool 3/1 p1", lambda: AvgPool2d(3, 1, padding=1), (2, 5, 5), True),
    ("global avgpool", lambda: GlobalAvgPool(), (3, 4, 4), True),
    ("batchnorm fc train", lambda: BatchNorm(), (5,), True),
    ("batchnorm fc eval", lambda: BatchNorm(), (5,), False),
    ("batchnorm conv train", lambda: BatchNorm(), (3, 4, 4), True),
    ("batchnorm conv eval", lambda: BatchNorm(), (3, 4, 4), False),
    ("preact block identity train", lambda: PreActBlock(2), (2, 5, 5), True),
    ("preact block s2 proj train", lambda: PreActBlock(3, stride=2), (2, 6, 6), True),
    ("preact block proj eval", lambda: PreActBlock(3, projection=True), (2, 5, 5), False),
    ("sequential fc", lambda: Sequential([("fc1", Linear(6)), ("relu", ReLU()),
                                          ("fc2", Linear(3))]), (4,), True),
    # ReLU before a tiling max pool: Sequential runs the pair fused (one gather, one scatter)
    ("sequential conv-bn-relu-pool-fc", lambda: Sequential([
        ("conv", Conv2d(3, 3, padding=1)), ("bn", BatchNorm()), ("relu", ReLU()),
        ("pool", MaxPool2d(2, 2)), ("flatten", Flatten()), ("fc", Linear(4))]), (2, 6, 6), True),
]

#: (zoo name, input shape, classes, build options, train mode) -- small but complete
MODEL_CASES = [
    ("mlp", (1, 6, 6), 4, {"hidden": (8, 6)}, True),
    ("cnn-small", (1, 8, 8), 4, {"channels": 3}, True),
    ("cnn-big", (1, 8, 8), 4, {"channels": (2, 3, 4), "hidden": 5}, True),
    ("convnet", (3, 8, 8), 4, {"width": 1 / 16}, True),
    ("resnet-mini", (3, 8, 8), 4, {"width": 0.25}, True),
    ("resnet-mini", (3, 8, 8), 4, {"width": 0.25}, False),
    # 8 and 16 channels on 16×16 and 8×8: "auto" runs stage 1 on shifted products
    ("resnet-mini", (3, 16, 16), 4, {"width": 0.5}, True),
    # 16 channels on 8×8 after conv1 and pool1: "auto" runs conv2 in the Fourier domain
    ("convnet", (3, 16, 16), 4, {"width": 0.25}, True),
    ("resnet18v2", (3, 8, 8), 4, {"width": 1 / 16}, True),
]


def check_layer_case(name, factory, in_shape, train, batch=3, device="cpu"):
    """rop, backward, adjoint and backward_rop checks of one layer case on ``device``."""
    xp = backend.xp_for(device)
    results = gradcheck.check_map(name, *gradcheck.layer_map(factory(), in_shape, batch, train,
                                                             xp=xp))
    results.append(gradcheck.check_backward_rop(name, factory(), in_shape, batch, train, xp=xp))
    return results


def check_model_case(name, in_shape, classes, options, train, batch=3, max_coords=40, h=1e-6,
                     device="cpu"):
    """rop, backward and adjoint checks of a zoo model on the flat vector, on ``device``.

    The step is ``h = 1e-6`` (layers use 1e-5): a whole ReLU network has
    thousands of pre-activations, and with steps of 2e-5 one of them now and
    then crosses its kink inside the stencil (the error then falls from 1e-3
    to 1e-10 as h shrinks -- a kink, not a wrong derivative).
    """
    from .models import build
    model = build(name, in_shape, classes, dtype="float64", device=device, **options)
    rng = np.random.default_rng(7)
    x = backend.to_device(rng.standard_normal((batch,) + tuple(in_shape)), device)
    state = None
    if not train:             # perturbed on the host, then moved: the same numbers on any device
        state = {}
        for k, v in model.init_state().items():
            v = backend.asnumpy(v)
            noise = 0.3 * rng.random(v.shape) if "var" in k else 0.1 * rng.standard_normal(v.shape)
            state[k] = backend.to_device(v + noise, device)
    mode = "train" if train else "eval"
    label = f"model {name} ({model.num_params} p, {mode})"
    return gradcheck.check_map(label, *gradcheck.model_map(model, x, train, state),
                               max_coords=max_coords, h=h)


def run(layers=True, models=True, progress=None, device="cpu"):
    """All catalogue checks on ``device``; ``progress(label)`` is called before each case."""
    results = []
    if layers:
        for name, factory, in_shape, train in LAYER_CASES:
            if progress:
                progress(name)
            results += check_layer_case(name, factory, in_shape, train, device=device)
    if models:
        for case in MODEL_CASES:
            if progress:
                progress(f"model {case[0]}")
            results += check_model_case(*case, device=device)
    return results
