"""A network with a flat parameter vector, and its Linearization at a point.

::

    model = hfmeta.models.build("convnet", in_shape=(3, 32, 32), classes=10)
    w     = model.init(seed=0)                  # flat vector, layout order
    lin   = model.linearize(w, x, train=True)   # forward at (w, x); caches kept
    lin.output                                  # logits z, shape (n, classes)
    lin.rop(v)                                  # J v        (n, classes)
    lin.backward(dz)                            # Jᵀ dz      flat, like w
    lin.backward_rop(dz, v, ddz)                # R{Jᵀ dz} along (v, ddz): exact Hessian products
    lin.sq_grad(dz, out)                        # out += Σ_i (J_iᵀ dz_i)²   (per-example squares)
    lin.backward_diag(d2z)                      # Becker-LeCun diagonal pass

The Gauss-Newton product (Schraudolph 2002; Martens 2010) is then
``lin.backward(loss.hvp(z, y, lin.rop(v)))``.

A :class:`Linearization` is the network frozen at one point ``(w, x)``: it
owns the caches, so no stale cache can leak between points.  Batch-norm
running statistics live in a separate ``state`` dict; a train-mode
linearization offers ``lin.new_state(state, momentum)``.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .layers.container import Sequential
from .params import ParamLayout


class Model:
    """A :class:`Sequential` network bound to an input shape, class count and dtype.

    Parameters
    ----------
    net : Sequential
    in_shape : tuple   input shape without the batch axis, e.g. (3, 32, 32)
    classes : int      number of outputs
    dtype : "float32" (training default) or "float64" (derivative checks)
    device : "cpu" or "gpu"
    name : str         zoo name, recorded in checkpoints
    config : dict      the zoo options it was built with (``width``, ``channels``, …),
                       recorded in meta files
    """

    def __init__(self, net: Sequential, in_shape, classes, dtype="float32",
                 device="cpu", name="custom", config=None):
        self.net = net
        self.in_shape = tuple(int(d) for d in in_shape)
        self.classes = int(classes)
        self.dtype = backend.check_dtype(dtype)
        self.device = device
        self.xp = backend.xp_for(device)
        self.name = name
        self.config = dict(config or {})
        out = net.build(self.in_shape)
        net.place(device)
        if out != (self.classes,):
            raise ValueError(f"{name}: network output shape {out} != ({self.classes},)")
        owners = net.layer_of_param()
        self.layout = ParamLayout((n, s, k, owners[n]) for n, s, k in net.param_specs())
        self._state_specs = net.state_specs()

    # -- construction ----------------------------------------------------------
    def init(self, seed: int = 0):
        """Flat initial parameters drawn on the host from ``numpy.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        tensors = self.net.init_params(rng)
        w = self.layout.flatten(tensors, np, np.float64).astype(self.dtype)
        return backend.to_device(w, self.device)

    def init_state(self) -> dict:
        """Initial running statistics ``{name: array}`` (empty without batch norm)."""
        xp = self.xp
        return {n: xp.full(s, v, dtype=self.dtype) for n, s, v in self._state_specs}

    @property
    def num_params(self) -> int:
        return self.layout.size

    # -- evaluation --------------------------------------------------------------
    def linearize(self, w, x, train: bool = True, state=None) -> "Linearization":
        """Run the forward pass at ``(w, x)`` and keep what the derivatives need."""
        if x.ndim != len(self.in_shape) + 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"{self.name} expects inputs (n, {', '.join(map(str, self.in_shape))}), "
                             f"got {tuple(x.shape)}")
        if not train and self._state_specs and state is None:
            raise ValueError("eval mode needs the batch-norm running statistics (state)")
        return Linearization(self, w, x, train, state)

    def forward(self, w, x, train: bool = False, state=None):
        """Logits only (no caches kept beyond the call)."""
        return self.linearize(w, x, train, state).output

    def __repr__(self):
        return f"Model({self.name}, in={self.in_shape}, classes={self.classes}, params={self.num_params})"


class Linearization:
    """The network frozen at ``(w, x)``: output, Jacobian products, state update."""

    def __init__(self, model: Model, w, x, train: bool, state):
        self.model = model
        self.w = w
        self.x = x
        self.train = train
        self.p = model.layout.views(w)
        self.output, self.cache = model.net.forward(self.p, x, train, state)

    def first(self, size: int) -> "Linearization":
        """The linearization at ``(w, x[:size])`` made from this one's caches (no
        forward pass): every layer slices its cache to the first ``size``
        examples (:meth:`hfmeta.layers.base.Layer.slice_cache`).  Raises
        ``NotImplementedError`` when a layer cannot slice its cache (batch norm in
        either mode, a pre-activation block): then run ``model.linearize`` on the
        sub-batch."""
        sub = Linearization.__new__(Linearization)
        sub.model, sub.w, sub.x, sub.train, sub.p = self.model, self.w, self.x[:size], self.train, self.p
        sub.cache = self.model.net.slice_cache(self.cache, size)
        sub.output = self.output[:size]
        return sub

    def _flat(self, like):
        """An uninitialised flat vector like ``w``, on ``like``'s device (every
        pass that fills one overwrites all of it)."""
        xp = backend.get_array_module(like)
        return xp.empty(self.model.layout.size, dtype=self.w.dtype)

    def rop(self, v):
        """``J v``: the output direction for a flat parameter direction ``v``."""
        dz = self.model.net.rop(self.p, self.cache, self.model.layout.views(v), None)
        if dz is None:
            dz = self.output * 0
        return dz

    def backward(self, dz, out=None):
        """``Jᵀ dz`` as a flat vector (written into ``out`` if given)."""
        out = self._flat(dz) if out is None else out
        self.model.net.backward(self.p, self.cache, dz, self.model.layout.views(out), False)
        return out

    def rop_record(self, v):
        """``(dxs, J v)``: the R-op that also keeps every layer's input direction
        (what :meth:`backward_rop` needs; pass it there to avoid a second R-pass)."""
        dxs, dz = self.model.net.rop_inputs(self.p, self.cache, self.model.layout.views(v), None)
        return dxs, (self.output * 0 if dz is None else dz)

    def backward_rop(self, dz, v, ddz, recorded=None, out=None):
        """``R{Jᵀ dz}`` along the parameter direction ``v`` and output-cotangent direction ``ddz``.

        ``= Jᵀ ddz + Σ_k (∂²z_k/∂w²) v · dz_k`` (flat, like ``w``): the
        second-order terms of every layer at the recorded cotangents.  Built
        from a forward R-pass recording each layer's input direction
        (``recorded = rop_record(v)``, computed if not given), a backward pass
        recording each layer's output cotangent, then each layer's
        ``backward_rop`` from the last layer to the first.
        """
        net, layout = self.model.net, self.model.layout
        dxs = (recorded or self.rop_record(v))[0]
        _, dys = net.backward_cotangents(self.p, self.cache, dz, layout.views(self._flat(dz)), False)
        out = self._flat(dz) if out is None else out
        net.backward_rop_recorded(self.p, self.cache, dys, layout.views(v), dxs, ddz,
                                  layout.views(out), False)
        return out

    def sq_grad(self, dz, out):
        """``out += Σ_i (J_iᵀ dz_i)²``: squared per-example gradients of ``⟨dz, z⟩``.

        Raises ``NotImplementedError`` when a layer couples the examples
        (batch norm in train mode); :mod:`hfmeta.diagonal` then falls back to
        one backward pass per example.
        """
        self.model.net.sq_grad(self.p, self.cache, dz, self.model.layout.views(out))
        return out

    def backward_diag(self, d2z, out=None):
        """Becker-LeCun diagonal second derivatives from ``d2z ≈ ∂²E/∂z²`` (flat, like ``w``)."""
        out = self._flat(d2z) if out is None else out
        self.model.net.backward_diag(self.p, self.cache, d2z, self.model.layout.views(out), False)
        return out

    def new_state(self, state: dict, momentum: float = 0.1) -> dict:
        """Running statistics after this train-mode forward (PyTorch's momentum convention)."""
        if not self.train:
            return state
        return self.model.net.new_state(state, self.cache, momentum)
