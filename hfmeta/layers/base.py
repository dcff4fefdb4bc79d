"""The layer protocol: forward, R-op and backward, written out by hand.

A layer is a small stateless object that holds hyper-parameters only (kernel
size, stride, ...).  Parameters, running state and caches are passed in and
out explicitly, so one layer object can be evaluated at many points::

    out_shape     = layer.build(in_shape)          # shapes without the batch axis
    layer.place(device)                            # device-dependent algorithm choice
    y, cache      = layer.forward(p, x, train, state)
    dy            = layer.rop(p, cache, dp, dx)    # J_p dp + J_x dx  (Pearlmutter's R{.})
    dx            = layer.backward(p, cache, dy, dp_out, need_dx)   # J^T dy
    ddx           = layer.backward_rop(p, cache, dy, dp, dx, ddy, ddp_out, need_dx)
                                                   # R{backward}: exact Hessian products

* ``p`` maps the layer's *local* parameter names (``"weight"``, ``"bias"``,
  ``"gamma"``, ``"beta"``; composites use dotted names ``"conv1.weight"``) to
  views of the flat parameter vector.
* ``rop`` reuses the forward cache (im2col columns, masks, normalised
  activations), so it costs about one forward.  ``dp`` is a dict of direction
  views or ``None``; ``dx`` may be ``None`` meaning a zero input direction.
  It returns ``None`` when both are zero.
* ``backward`` **overwrites** the parameter cotangents in ``dp_out`` (views of
  a flat gradient vector) and returns the input cotangent, or ``None`` when
  ``need_dx`` is false (the first layer never needs it).
* ``state`` holds running statistics (batch norm) and is kept apart from the
  parameters; ``layer.new_state(state, cache, momentum)`` returns the updated
  running statistics after a train-mode forward.

Conventions follow PyTorch: NCHW activations, conv weight (o, i, kh, kw),
linear weight (o, i).  Index letters in docstrings: n batch, c channel,
h/w spatial, o out, i in.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

_LEAN = contextvars.ContextVar("hfmeta_lean_caches", default=False)


@contextlib.contextmanager
def lean_caches(on: bool = True):
    """Forward passes run inside this block keep *lean* caches: a layer drops what
    it can recompute cheaply from arrays the network keeps alive anyway, and every
    later pass recomputes it (bit for bit the same numbers, less memory, more time).

    Today: an im2col :class:`~hfmeta.layers.conv.Conv2d` caches its input instead
    of its columns, about kh·kw/(sh·sw) times larger (in the zoo the input is the
    input batch or a ReLU output, cached already, or, for the second and later
    convolutions of the conv stacks, a max-pool output, which only this cache
    keeps); its R-op, backward and R-backward
    unfold the input again.  MLHF meta-training, which keeps two linearizations
    alive, runs with them.
    """
    token = _LEAN.set(bool(on))
    try:
        yield
    finally:
        _LEAN.reset(token)


def lean() -> bool:
    """True inside :func:`lean_caches`."""
    return _LEAN.get()


class Layer:
    """Base class: a layer without parameters or state."""

    #: name given by the enclosing container (e.g. ``"conv1"``)
    name: str = ""

    def build(self, in_shape: tuple) -> tuple:
        """Fix shapes from the input shape (without batch axis); return the output shape."""
        self.in_shape = tuple(in_shape)
        self.out_shape = self.output_shape(self.in_shape)
        return self.out_shape

    def output_shape(self, in_shape: tuple) -> tuple:
        return in_shape

    def place(self, device: str) -> None:
        """Choose device-dependent algorithms once the device (``"cpu"`` or ``"gpu"``)
        is known; called by :class:`~hfmeta.model.Model` after :meth:`build`.
        The numbers do not depend on the choice, only the speed (default: nothing)."""

    # -- parameters and state -------------------------------------------------
    def param_specs(self) -> list:
        """``[(local_name, shape, kind), ...]``; valid after :meth:`build`."""
        return []

    def init_params(self, rng: np.random.Generator) -> dict:
        """``{local_name: float64 numpy array}`` drawn from ``rng`` (host side)."""
        return {}

    def state_specs(self) -> list:
        """``[(local_name, shape, initial_value), ...]`` for running statistics."""
        return []

    def new_state(self, state: dict, cache, momentum: float) -> dict:
        """Running statistics after a train-mode forward (default: unchanged)."""
        return state

    # -- derivatives ----------------------------------------------------------
    def forward(self, p, x, train: bool, state=None):
        raise NotImplementedError

    def rop(self, p, cache, dp, dx):
        raise NotImplementedError

    def slice_cache(self, cache, size: int):
        """The cache this layer's forward would have kept for the first ``size``
        examples of the batch, from the whole batch's ``cache`` (views where
        possible).  Default: ``NotImplementedError``.  Conv2d, Linear, ReLU,
        Flatten, the pools and a Sequential of those slice; BatchNorm (in either
        mode: in train mode its cache couples the examples) and PreActBlock do not."""
        raise NotImplementedError(f"{type(self).__name__} cannot slice its cache")

    def backward(self, p, cache, dy, dp_out, need_dx: bool = True):
        raise NotImplementedError

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx: bool = True):
        """R-operator of :meth:`backward`, for exact Hessian-vector products.

        ``backward`` maps ``(x, p, dy) -> (x̄, p̄)``.  Along the direction
        ``(dx, dp, ddy)`` (``dx``, ``dp`` as given to :meth:`rop`, ``ddy`` the
        R-direction of the output cotangent) this returns ``R{x̄}`` and
        overwrites ``ddp_out`` with ``R{p̄}``.  Terms: ``Jᵀ ddy`` plus the
        second-order terms ``∂(Jᵀ dy)/∂x · dx + ∂(Jᵀ dy)/∂p · dp`` (zero for
        layers that are linear in their input and have no parameters).
        """
        raise NotImplementedError(f"{type(self).__name__} has no backward_rop")

    # -- diagonal curvature hooks -------------------------------------------
    def sq_grad(self, p, cache, dy, sq_out):
        """Add ``Σ_i (∂⟨dy_i, y_i⟩/∂p)²`` -- squared *per-example* parameter
        gradients, summed over the batch -- into ``sq_out`` (views, ``+=``).

        Back-propagating each column of the loss-Hessian factor ``S`` and
        calling this at every parameterised layer gives the exact diagonal of
        the Gauss-Newton matrix (BackPACK's DiagGGN).  For convolutions the
        per-example gradient sums over spatial positions *before* squaring.
        Layers that couple examples (batch norm in train mode) raise
        ``NotImplementedError``; the caller then falls back to one backward
        pass per output coordinate.
        """
        if self.param_specs():
            raise NotImplementedError(f"{type(self).__name__} has no sq_grad")

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        """Becker & LeCun (1988) one-pass diagonal second derivatives.

        ``d2y`` (shape of y) approximates ``∂²E/∂y²`` elementwise; return
        ``∂²E/∂x²`` and overwrite ``d2p_out`` with ``∂²E/∂p²`` computed with
        squared weights going backward and cross terms dropped:
        for ``y = W x + b``: ``d2x = (W²)ᵀ d2y``, ``d2W = Σ_n d2y x²ᵀ``,
        ``d2b = Σ_n d2y``.  Piecewise-linear layers (ReLU, max-pool) pass
        ``d2y`` through their mask (their own second derivative is zero).
        """
        raise NotImplementedError(f"{type(self).__name__} has no backward_diag")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def fan_in_uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """U(−1/√fan_in, 1/√fan_in): PyTorch's default for ``nn.Linear``/``nn.Conv2d``
    weights (Kaiming-uniform with a = √5) and biases.

    hfmeta's default, so nets start where the same PyTorch net would (He et al.'s
    N(0, 2/fan_in) on every layer, output layer included, gives logits large
    enough that plain SGD at lr 0.1 diverges on MNIST).
    """
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


def he_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """He et al. (2015) initialisation N(0, 2 / fan_in) for ReLU networks."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot & Bengio (2010) uniform initialisation U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape)
