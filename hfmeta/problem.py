"""A training problem: model + loss, evaluated at flat parameter vectors.

Every optimizer, hand-crafted or learned, sees the network only through a
:class:`Problem`::

    problem = Problem(model, SoftmaxCrossEntropy())
    f       = problem.loss(w, batch)                  # 0-d array
    f, g, lin = problem.loss_and_grad(w, batch)       # value, flat gradient, Linearization
    Gv      = problem.gvp(lin, v)                     # Gauss-Newton product at lin's point
    Hv      = problem.hvp(lin, v, y)                  # exact Hessian product (hfmeta.curvature)

A batch is ``(x, y)`` on the model's device.  Batch-norm running statistics
(``problem.state``) are *not* touched by these calls, so line searches and
meta-training may evaluate many points; each optimizer's ``step`` calls
``problem.commit_state(lin)`` once per step with the linearization of the
step's gradient (:meth:`hfmeta.optim.base.Optimizer.gradient`); the training
loop does not.
"""
from __future__ import annotations

from . import curvature
from .losses import SoftmaxCrossEntropy


class Problem:
    def __init__(self, model, loss=None, bn_momentum: float = 0.1):
        self.model = model
        self.loss_fn = loss if loss is not None else SoftmaxCrossEntropy()
        self.state = model.init_state()
        self.bn_momentum = bn_momentum

    @property
    def xp(self):
        return self.model.xp

    def linearize(self, w, batch, train: bool = True):
        x, _ = batch
        return self.model.linearize(w, x, train, None if train else self.state)

    def loss(self, w, batch, train: bool = True):
        """Mean loss at ``w`` (train mode: batch statistics)."""
        return self.loss_fn.value(self.linearize(w, batch, train).output, batch[1])

    def loss_and_grad(self, w, batch):
        """``(loss, gradient, lin)`` at ``w`` in train mode."""
        lin = self.linearize(w, batch, True)
        value, dz = self.loss_fn.value_and_grad(lin.output, batch[1])
        return value, lin.backward(dz), lin

    def gvp(self, lin, v, damping=None):
        """Gauss-Newton product ``G v = Jᵀ H_l J v`` (+ ``damping ⊙ v`` or ``damping · v``)."""
        return curvature.gvp(lin, self.loss_fn, v, damping)

    def hvp(self, lin, v, y, damping=None):
        """Exact Hessian product ``H v`` at ``lin``'s point (needs the labels ``y``)."""
        return curvature.hvp(lin, self.loss_fn, y, v, damping)

    def commit_state(self, lin):
        """Fold a train-mode forward's batch statistics into the running statistics."""
        self.state = lin.new_state(self.state, self.bn_momentum)

    def batch_statistics(self, w, batches):
        """Batch-norm statistics recomputed at ``w`` ("precise BN", Wu & Johnson 2021,
        *Rethinking "Batch" in BatchNorm*): the equal-weight mean of each batch's
        train-mode mean and unbiased variance over ``batches``, in the layout of
        ``state``.  The running averages instead mix the statistics of the last
        ~1/momentum steps' weights, which lag the current weights when an
        optimizer takes long steps.  ``{}`` for a model without batch norm."""
        state = self.model.init_state()
        if not state:
            return state
        for k, batch in enumerate(batches):
            state = self.linearize(w, batch, True).new_state(state, 1.0 / (k + 1))
        return state

    def evaluate(self, w, x, y, batch_size: int = 500, state=None):
        """``(mean loss, accuracy)`` in eval mode over ``(x, y)``, in chunks, with the
        running statistics ``self.state`` or the given batch-norm ``state``."""
        state = self.state if state is None else state
        total, correct, n = 0.0, 0.0, x.shape[0]
        for i in range(0, n, batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            z = self.model.forward(w, xb, False, state)
            total += float(self.loss_fn.value(z, yb)) * xb.shape[0]
            correct += float((z.argmax(axis=1) == yb).sum())
        return total / n, correct / n
