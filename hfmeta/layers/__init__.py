"""Layers with hand-written forward, R-op and backward passes (one family per file)."""
from .base import Layer
from .container import Composite, Sequential
from .linear import Linear
from .activations import ReLU
from .flatten import Flatten

__all__ = ["Layer", "Composite", "Sequential", "Linear", "ReLU", "Flatten"]

try:  # families written alongside; imported when present
    from .conv import Conv2d  # noqa: F401
    __all__.append("Conv2d")
except ImportError:
    pass
try:
    from .pooling import MaxPool2d, AvgPool2d, GlobalAvgPool  # noqa: F401
    __all__ += ["MaxPool2d", "AvgPool2d", "GlobalAvgPool"]
except ImportError:
    pass
try:
    from .batchnorm import BatchNorm  # noqa: F401
    __all__.append("BatchNorm")
except ImportError:
    pass
try:
    from .residual import PreActBlock  # noqa: F401
    __all__.append("PreActBlock")
except ImportError:
    pass
