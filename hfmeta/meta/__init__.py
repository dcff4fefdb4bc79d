"""Learned optimizers' building blocks: the coordinate-wise LSTM with BPTT,
its input/output processing, and a bank of LSTMs, one per parameter group."""
from .bank import BankCache, LSTMBank
from .lstm import CoordinateLSTM
from .preprocess import (POSTPROCESS, PREPROCESS, Log, LogSign, Scale, Softplus, Tanh,
                         build_inputs, inputs_backward)

__all__ = ["BankCache", "CoordinateLSTM", "LSTMBank", "Log", "LogSign", "POSTPROCESS",
           "PREPROCESS", "Scale", "Softplus", "Tanh", "build_inputs", "inputs_backward"]
