"""Composite layers: a layer made of named child layers.

:class:`Composite` handles naming and parameter routing: a child ``conv1``
with local parameter ``weight`` appears to the parent as ``conv1.weight``, and
``p``/``dp``/``dp_out`` dicts are split per child with :meth:`Composite.sub`.

:class:`Sequential` composes children in order:

* forward:   x_{k+1} = f_k(x_k)
* R-op:      dx_{k+1} = J_k^p dp_k + J_k^x dx_k      (chain rule, forwards)
* backward:  dx_k = (J_k^x)ᵀ dx_{k+1}, dp_k = (J_k^p)ᵀ dx_{k+1}   (backwards)

``None`` directions (zero) are propagated until the first layer with a
parameter direction, so the R-op of a network does not push zeros through the
layers before its first parameter.
"""
from __future__ import annotations

from ..backend import get_array_module
from .activations import ReLU
from .base import Layer
from .pooling import MaxPool2d


class Composite(Layer):
    """A layer whose parameters and state are those of its named children."""

    def __init__(self, children):
        self.children = []
        for name, layer in children:
            if "." in name:
                raise ValueError(f"child name {name!r} must not contain '.'")
            if any(name == taken for taken, _ in self.children):
                raise ValueError(f"two children named {name!r}")
            layer.name = name
            self.children.append((name, layer))

    def param_specs(self):
        return [(f"{name}.{local}", shape, kind)
                for name, layer in self.children
                for local, shape, kind in layer.param_specs()]

    def layer_of_param(self):
        """``{local_param_name: owning leaf-layer path}`` (e.g. ``"b1.conv1"``)."""
        out = {}
        for name, layer in self.children:
            if isinstance(layer, Composite):
                for local, owner in layer.layer_of_param().items():
                    out[f"{name}.{local}"] = f"{name}.{owner}"
            else:
                for local, _, _ in layer.param_specs():
                    out[f"{name}.{local}"] = name
        return out

    def init_params(self, rng):
        return {f"{name}.{local}": value
                for name, layer in self.children
                for local, value in layer.init_params(rng).items()}

    def state_specs(self):
        return [(f"{name}.{local}", shape, value)
                for name, layer in self.children
                for local, shape, value in layer.state_specs()]

    @staticmethod
    def sub(d, name):
        """The part of a prefixed dict that belongs to child ``name`` (``None`` stays ``None``)."""
        if d is None:
            return None
        prefix = name + "."
        n = len(prefix)
        return {k[n:]: v for k, v in d.items() if k.startswith(prefix)}

    def place(self, device):
        for _, layer in self.children:
            layer.place(device)

    def leaves(self, prefix=""):
        """Yield ``(path, layer)`` for every non-composite layer, depth first."""
        for name, layer in self.children:
            path = f"{prefix}{name}"
            if isinstance(layer, Composite):
                yield from layer.leaves(path + ".")
            else:
                yield path, layer

    def __repr__(self):
        inner = ", ".join(f"{n}={l!r}" for n, l in self.children)
        return f"{type(self).__name__}({inner})"


class Sequential(Composite):
    """Children applied one after another.

    Besides forward/rop/backward, the curvature passes compose children too:

    * ``backward_rop``: forward R-pass recording every child's input direction
      ``dx_k``, backward pass recording every child's output cotangent
      ``dy_k``, then the R-backward ``ddy_{k-1} = child_k.backward_rop(dy_k,
      dp_k, dx_k, ddy_k)`` from the last child to the first.
    * ``sq_grad``: back-propagate ``dy`` and let each child add its squared
      per-example parameter gradients.
    * ``backward_diag``: the Becker-LeCun pass, child by child.
    """

    def build(self, in_shape):
        self.in_shape = tuple(in_shape)
        shape = self.in_shape
        for _, layer in self.children:
            shape = layer.build(shape)
        self.out_shape = shape
        return shape

    def forward(self, p, x, train, state=None):
        caches = []
        for name, layer in self.children:
            x, cache = layer.forward(self.sub(p, name), x, train, self.sub(state, name))
            caches.append(cache)
        return x, caches

    def slice_cache(self, cache, size):
        return [layer.slice_cache(c, size) for (_, layer), c in zip(self.children, cache)]

    def _relu_pool(self, k, cache):
        """True when child k is a ReLU feeding child k + 1, a tiling max pool: their
        R-op and backward run fused (the ReLU's mask only at the pool's winners,
        :meth:`MaxPool2d.rop_after_relu`, :meth:`MaxPool2d.backward_before_relu`)."""
        if k < 0 or k + 1 >= len(self.children):
            return False
        relu, pool = self.children[k][1], self.children[k + 1][1]
        return (isinstance(relu, ReLU) and isinstance(pool, MaxPool2d)
                and pool._tiles(cache[k + 1][1]))

    def rop(self, p, cache, dp, dx):
        k = 0
        while k < len(self.children):
            name, layer = self.children[k]
            dpk = self.sub(dp, name)
            if dx is None and not dpk:
                k += 1                       # zero direction in, zero direction out
            elif dx is not None and self._relu_pool(k, cache):
                dx = self.children[k + 1][1].rop_after_relu(cache[k + 1], cache[k], dx)
                k += 2
            else:
                dx = layer.rop(self.sub(p, name), cache[k], dpk or None, dx)
                k += 1
        return dx

    def rop_inputs(self, p, cache, dp, dx):
        """R-op that also returns each child's input direction: ``(dxs, dy)`` (``None`` = zero)."""
        dxs = []
        for (name, layer), c in zip(self.children, cache):
            dxs.append(dx)
            dpk = self.sub(dp, name)
            if dx is None and not dpk:
                continue  # zero direction in, zero direction out
            dx = layer.rop(self.sub(p, name), c, dpk or None, dx)
        return dxs, dx

    def _first_param(self):
        return next((k for k, (_, l) in enumerate(self.children) if l.param_specs()),
                    len(self.children))

    def _backprop(self, method, p, cache, dy, out, need_dx, dys=None):
        """Run ``child.<method>(p_k, cache_k, dy, out_k, need)`` from the last child to the first.

        The input cotangent of child k is needed only if the caller asked for
        it or an earlier child has parameters -- i.e. for every child after the
        first parameterised one (``k > first_param``).
        ``dys`` (a list) receives each child's output cotangent if given.
        """
        first_param = self._first_param()
        k = len(self.children) - 1
        while k >= 0:
            name, layer = self.children[k]
            if dys is not None:
                dys[k] = dy
            need = need_dx or k > first_param
            if (method == "backward" and dys is None and (need_dx or k - 1 > first_param)
                    and self._relu_pool(k - 1, cache)):        # ReLU, then a tiling max pool
                dy = layer.backward_before_relu(cache[k], cache[k - 1], dy)
                k -= 2
                continue
            dy = getattr(layer, method)(self.sub(p, name), cache[k], dy, self.sub(out, name), need)
            if dy is None:
                return None
            k -= 1
        return dy

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        return self._backprop("backward", p, cache, dy, dp_out, need_dx)

    def backward_cotangents(self, p, cache, dy, dp_out, need_dx=True):
        """Backward that also returns each child's output cotangent: ``(dx, dys)``."""
        dys = [None] * len(self.children)
        return self._backprop("backward", p, cache, dy, dp_out, need_dx, dys), dys

    def backward_rop(self, p, cache, dy, dp, dx, ddy, ddp_out, need_dx=True):
        xp = get_array_module(ddy)
        dxs, _ = self.rop_inputs(p, cache, dp, dx)
        scratch = {k: xp.empty_like(v) for k, v in ddp_out.items()}
        _, dys = self.backward_cotangents(p, cache, dy, scratch, need_dx)
        return self.backward_rop_recorded(p, cache, dys, dp, dxs, ddy, ddp_out, need_dx)

    def backward_rop_recorded(self, p, cache, dys, dp, dxs, ddy, ddp_out, need_dx=True):
        """R-backward given the recorded cotangents ``dys`` and input directions ``dxs``."""
        first_param = self._first_param()
        for k in range(len(self.children) - 1, -1, -1):
            name, layer = self.children[k]
            need = need_dx or k > first_param
            ddy = layer.backward_rop(self.sub(p, name), cache[k], dys[k], self.sub(dp, name) or None,
                                     dxs[k], ddy, self.sub(ddp_out, name), need)
            if ddy is None:
                return None
        return ddy

    def sq_grad(self, p, cache, dy, sq_out):
        xp = get_array_module(dy)
        first_param = self._first_param()
        scratch = {k: xp.empty_like(v) for k, v in sq_out.items()}
        for k in range(len(self.children) - 1, first_param - 1, -1):
            name, layer = self.children[k]
            layer.sq_grad(self.sub(p, name), cache[k], dy, self.sub(sq_out, name))
            if k > first_param:
                dy = layer.backward(self.sub(p, name), cache[k], dy, self.sub(scratch, name), True)

    def backward_diag(self, p, cache, d2y, d2p_out, need_dx=True):
        return self._backprop("backward_diag", p, cache, d2y, d2p_out, need_dx)

    def new_state(self, state, cache, momentum):
        out = dict(state)
        for (name, layer), c in zip(self.children, cache):
            sub = self.sub(state, name)
            if sub:
                for k, v in layer.new_state(sub, c, momentum).items():
                    out[f"{name}.{k}"] = v
        return out
