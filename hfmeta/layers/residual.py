"""The pre-activation residual block of ResNet v2 (He, Zhang, Ren, Sun 2016,
"Identity mappings in deep residual networks").

Shapes: x (n, i, h, w), y (n, o, h', w') with h' = ⌈h / stride⌉ (3×3 kernels,
padding 1).  The block is the small graph::

    a = relu1(bn1(x))                                  pre-activation
    h = conv2(relu2(bn2(conv1(a))))                    residual branch
    y = h + proj(a)     with a 1×1 projection          (stride or channels change)
    y = h + x           with the identity shortcut

conv1 is 3×3 with the block's stride, conv2 3×3 at stride 1, proj 1×1 with
the block's stride; no conv has a bias (batch norm follows).  Every pass below
walks this graph with the children's own passes (chain rule): forwards for
``forward`` and ``rop``; backwards for ``backward``, ``backward_rop``,
``sq_grad`` and ``backward_diag``, where the cotangents of the two paths that
leave ``a`` (or ``x``) are added.

Cost of the composite passes that need per-child cotangents, which the block
does not keep between calls (the cache holds the children's forward caches
only):

* ``backward_rop`` = one ``rop`` of the block (to get each child's input
  direction) + one ``backward`` (each child's cotangent ȳ) + one
  ``backward_rop`` of the children: about a forward and two backwards.
* ``sq_grad`` = one ``backward`` of the block (into scratch buffers) plus the
  children's ``sq_grad``.
"""
from __future__ import annotations

from .. import backend
from .activations import ReLU
from .batchnorm import BatchNorm
from .container import Composite
from .conv import Conv2d

#: children before the branch point ``a``, and on the residual branch
PRE = ("bn1", "relu1")
BRANCH = ("conv1", "bn2", "relu2", "conv2")


def _add_pairs(u, v):
    return tuple(backend.add_optional(a, b) for a, b in zip(u, v))


class PreActBlock(Composite):
    """``PreActBlock(o, stride=1, projection=None)``.

    ``projection=None`` uses the 1×1 projection exactly when the shape changes
    (stride ≠ 1 or i ≠ o); ``True`` forces it (METHODS.md: the first block of
    every stage projects the pre-activated input); ``False`` forbids it.
    """

    def __init__(self, out_channels: int, stride: int = 1, projection=None, eps: float = 1e-5):
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.projection = projection
        o = self.out_channels
        children = [("bn1", BatchNorm(eps)), ("relu1", ReLU()),
                    ("conv1", Conv2d(o, 3, stride=self.stride, padding=1, bias=False)),
                    ("bn2", BatchNorm(eps)), ("relu2", ReLU()),
                    ("conv2", Conv2d(o, 3, stride=1, padding=1, bias=False))]
        super().__init__(children + [("proj", Conv2d(o, 1, stride=self.stride, bias=False))])
        self.all_children = self.children

    def build(self, in_shape):
        self.in_shape = tuple(in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"PreActBlock needs inputs (c, h, w), got {in_shape}")
        reshapes = self.stride != 1 or self.in_shape[0] != self.out_channels
        if self.projection is False and reshapes:
            raise ValueError(f"PreActBlock({self.out_channels}, stride={self.stride}) on "
                             f"{self.in_shape} changes the shape: it needs the projection")
        self.has_projection = reshapes if self.projection is None else bool(self.projection)
        # parameters, state and repr follow the children actually used
        self.children = self.all_children if self.has_projection else self.all_children[:-1]
        self.layer = dict(self.children)
        shape = self.in_shape
        for name in PRE:
            shape = self.layer[name].build(shape)
        a_shape = shape
        for name in BRANCH:
            shape = self.layer[name].build(shape)
        if self.has_projection:
            self.layer["proj"].build(a_shape)
        self.out_shape = shape
        return shape

    # -- walking the graph -------------------------------------------------------
    def _forwards(self, x, step):
        """``y = branch(a) + shortcut`` with ``step(name, input) -> output`` for each child."""
        a = x
        for name in PRE:
            a = step(name, a)
        h = a
        for name in BRANCH:
            h = step(name, h)
        return backend.add_optional(h, step("proj", a) if self.has_projection else x)

    def _backwards(self, dy, step, need_dx, add=backend.add_optional):
        """Cotangent of x from that of y, ``step(name, cotangent, need_dx) -> input cotangent``."""
        da = dy
        for name in reversed(BRANCH):
            da = step(name, da, True)
        if self.has_projection:
            da = add(da, step("proj", dy, True))
        dx = da
        for name in reversed(PRE):  # bn1 has parameters: its input cotangent only on demand
            dx = step(name, dx, need_dx or name != PRE[0])
        if not need_dx:
            return None
        return dx if self.has_projection else add(dx, dy)

    def _scratch(self, name, like):
        """Throw-away parameter cotangent buffers for child ``name``."""
        xp = backend.get_array_module(like)
        return {local: xp.empty(shape, dtype=like.dtype)
                for local, shape, _ in self.layer[name].param_specs()}

    # -- the layer protocol ------------------------------------------------------
    def forward(self, p, x, train, state=None):
        caches = {}

        def step(name, u):
            u, caches[name] = self.layer[name].forward(self.sub(p, name), u, train,
                                                       self.sub(state, name))
            return u
        return self._forwards(x, step), caches

    def rop(self, p, cache, dp, dx):
        return self._rop(p, cache, dp, dx)

    def _rop(self, p, cache, dp, dx, record=None):
        """R-op; ``record[name]`` receives each child's input direction if given."""
        def step(name, u):
            if record is not None:
                record[name] = u
            dpk = self.sub(dp, name) or None
            if u is None and dpk is None:
                return None
            return self.layer[name].rop(self.sub(p, name), cache[name], dpk, u)
        return self._forwards(dx, step)

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        def step(name, g, need):
            return self.layer[name].backward(self.sub(p, name), cache[name], g,
                                             self.sub(dp_out, name), need)
        return self._backwards(dy, step, need_dx)

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        """R{backward}: children's ``backward`` (for ȳ) and ``backward_rop`` (for R{ȳ})
        run together in reverse order, each child at the input direction recorded by a
        fresh R-op pass (cost: see the module docstring)."""
        directions = {}
        self._rop(p, cache, dp, dx, record=directions)

        def step(name, pair, need):
            g, gg = pair
            layer, pk = self.layer[name], self.sub(p, name)
            ddx = layer.backward_rop(pk, cache[name], g, self.sub(dp, name) or None,
                                     directions[name], gg, self.sub(ddp_out, name), need)
            gx = layer.backward(pk, cache[name], g, self._scratch(name, g), need)
            return gx, ddx
        pair = self._backwards((dy, ddy), step, need_dx, _add_pairs)
        return None if pair is None else pair[1]

    def new_state(self, state, cache, momentum):
        out = dict(state)
        for name in ("bn1", "bn2"):
            for k, v in self.layer[name].new_state(self.sub(state, name), cache[name],
                                                   momentum).items():
                out[f"{name}.{k}"] = v
        return out

    def sq_grad(self, p, cache, dy, sq_out):
        """Children's squared per-example gradients, at the cotangents of one backward pass."""
        def step(name, g, need):
            layer, pk = self.layer[name], self.sub(p, name)
            layer.sq_grad(pk, cache[name], g, self.sub(sq_out, name))
            return layer.backward(pk, cache[name], g, self._scratch(name, g), need)
        self._backwards(dy, step, False)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        """Becker–LeCun through the graph: second derivatives of the two paths add."""
        def step(name, d2, need):
            return self.layer[name].backward_diag(self.sub(p, name), cache[name], d2,
                                                  self.sub(d2p_out, name), need)
        return self._backwards(d2y, step, need_dx)

    def __repr__(self):
        return (f"PreActBlock({self.out_channels}, stride={self.stride}, "
                f"projection={self.projection})")
