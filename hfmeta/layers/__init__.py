"""Layers with hand-written forward, R-op and backward passes (one family per file)."""
from .base import Layer
from .container import Composite, Sequential
from .linear import Linear
from .activations import ReLU
from .flatten import Flatten
from .conv import Conv2d
from .pooling import MaxPool2d, AvgPool2d, GlobalAvgPool
from .batchnorm import BatchNorm
from .residual import PreActBlock

__all__ = ["Layer", "Composite", "Sequential", "Linear", "ReLU", "Flatten", "Conv2d",
           "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "BatchNorm", "PreActBlock"]
