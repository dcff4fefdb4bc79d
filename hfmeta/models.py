"""The model zoo, registered by name.

=============  ==============================================================
name           architecture (input c×h×w, k classes)
=============  ==============================================================
``mlp``        flatten → fc 256 → ReLU → fc 128 → ReLU → fc k
``cnn-small``  conv 5×5×16 SAME → ReLU → max-pool 2/2 → fc k
               (the SLSTM slides' "1 conv + 1 fc" net)
``cnn-big``    3 × [conv SAME → ReLU → max-pool 2/2] with 16, 32, 64 channels
               (5×5, 5×5, 3×3) → fc 128 → ReLU → fc k   ("3 conv + 2 fc")
``convnet``    CUDA-convnet variant of the MLHF released code: conv 5×5×64
               SAME → ReLU → max-pool 2/2 → conv 5×5×64 SAME → ReLU →
               max-pool 2/2 → fc 384 → ReLU → fc 192 → ReLU → fc k.
               1,756,426 parameters on 3×32×32 with k = 10; ``width``
               scales every hidden width (0.32 gives 177,287, close to the
               paper's 186k; 0.25 gives 111,178).
``resnet-mini`` ResNet-20 v2 (He et al. 2016, pre-activation): conv 3×3×16
               stem, 3 stages × 3 blocks of 16, 32, 64 channels, a 1×1
               projection of the pre-activated input in the first block of
               each stage, no conv biases, final BN → ReLU → global average
               pool → fc k.
``resnet18v2`` stages [2, 2, 2, 2] × [64, 128, 256, 512] (projections only
               where the shape changes, as He et al.); ImageNet stem
               (7×7/2 conv + 3×3/2 max-pool) for inputs ≥ 128 pixels, a
               3×3 stem for downsampled ImageNet and CIFAR.
=============  ==============================================================

``build(name, in_shape, classes, dtype="float32", device="cpu", **options)``
returns a :class:`hfmeta.model.Model`.
"""
from __future__ import annotations

import inspect
from dataclasses import replace

from .checks import COUNT, POSITIVE, SIZES, check_options
from .errors import UserError
from .layers import (AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear,  # noqa: F401
                     MaxPool2d, PreActBlock, ReLU, Sequential)
from .model import Model


def _scaled(n, width):
    return max(1, int(round(n * width)))


def mlp(in_shape, classes, hidden=(256, 128)):
    layers = [("flatten", Flatten())]
    for k, h in enumerate(hidden, 1):
        layers += [(f"fc{k}", Linear(h)), (f"relu{k}", ReLU())]
    layers.append((f"fc{len(hidden) + 1}", Linear(classes)))
    return Sequential(layers)


def _conv_stack(convs, fcs, classes):
    """[(channels, kernel)] conv-ReLU-maxpool stages, then fc-ReLU layers, then fc k."""
    layers = []
    for k, (channels, kernel) in enumerate(convs, 1):
        layers += [(f"conv{k}", Conv2d(channels, kernel, padding="same")),
                   (f"relu{k}", ReLU()), (f"pool{k}", MaxPool2d(2, 2))]
    layers.append(("flatten", Flatten()))
    for k, h in enumerate(fcs, 1):
        layers += [(f"fc{k}", Linear(h)), (f"relu_fc{k}", ReLU())]
    layers.append((f"fc{len(fcs) + 1}", Linear(classes)))
    return Sequential(layers)


def cnn_small(in_shape, classes, channels=16):
    return _conv_stack([(channels, 5)], [], classes)


def cnn_big(in_shape, classes, channels=(16, 32, 64), hidden=128):
    return _conv_stack(list(zip(channels, (5, 5, 3))), [hidden], classes)


def convnet(in_shape, classes, width=1.0):
    c = _scaled(64, width)
    return _conv_stack([(c, 5), (c, 5)], [_scaled(384, width), _scaled(192, width)], classes)


def _resnet_v2(stem, stages, classes, project_every_stage):
    """Stem, stages of pre-activation blocks ``[(channels, blocks, stride)]``, head.

    The first block of a stage gets a 1×1 projection shortcut when its shape
    changes, and always when ``project_every_stage`` (the MLHF code's ResNet-20).
    """
    layers = list(stem)
    for s, (channels, blocks, stride) in enumerate(stages, 1):
        for b in range(1, blocks + 1):
            first = b == 1
            layers.append((f"stage{s}_block{b}",
                           PreActBlock(channels, stride=stride if first else 1,
                                       projection=True if first and project_every_stage
                                       else None)))
    layers += [("bn_final", BatchNorm()), ("relu_final", ReLU()),
               ("pool", GlobalAvgPool()), ("fc", Linear(classes))]
    return Sequential(layers)


def resnet_mini(in_shape, classes, width=1.0):
    w = [_scaled(c, width) for c in (16, 32, 64)]
    return _resnet_v2([("conv_stem", Conv2d(w[0], 3, padding=1, bias=False))],
                      [(w[0], 3, 1), (w[1], 3, 2), (w[2], 3, 2)], classes, True)


def resnet18v2(in_shape, classes, width=1.0):
    w = [_scaled(c, width) for c in (64, 128, 256, 512)]
    if min(in_shape[1:]) >= 128:  # full-size ImageNet stem
        stem = [("conv_stem", Conv2d(w[0], 7, stride=2, padding=3, bias=False)),
                ("pool_stem", MaxPool2d(3, 2, padding=1))]
    else:
        stem = [("conv_stem", Conv2d(w[0], 3, padding=1, bias=False))]
    return _resnet_v2(stem, [(w[0], 2, 1), (w[1], 2, 2), (w[2], 2, 2), (w[3], 2, 2)], classes,
                      False)


#: the allowed values of each model's options
OPTION_RANGES = {
    "mlp": {"hidden": SIZES},
    "cnn-small": {"channels": COUNT},
    "cnn-big": {"channels": replace(SIZES, length=3), "hidden": COUNT},
    "convnet": {"width": POSITIVE},
    "resnet-mini": {"width": POSITIVE},
    "resnet18v2": {"width": POSITIVE},
}

ZOO = {
    "mlp": mlp,
    "cnn-small": cnn_small,
    "cnn-big": cnn_big,
    "convnet": convnet,
    "resnet-mini": resnet_mini,
    "resnet18v2": resnet18v2,
}


def build(name, in_shape, classes, dtype="float32", device="cpu", **options):
    """Build zoo model ``name`` for inputs ``in_shape`` (c, h, w) and ``classes`` outputs."""
    if name not in ZOO:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(ZOO)}")
    in_shape = tuple(int(d) for d in in_shape)
    try:
        inspect.signature(ZOO[name]).bind(in_shape, classes, **options)
    except TypeError as e:
        raise UserError(f"model {name!r}: bad option ({e})") from None
    check_options(f"model {name!r}", options, OPTION_RANGES[name])
    try:
        net = ZOO[name](in_shape, classes, **options)
        return Model(net, in_shape, classes, dtype=dtype, device=device, name=name,
                     config=dict(options))
    except ValueError as e:
        raise UserError(f"model {name!r} does not fit inputs {in_shape}: {e}") from None
