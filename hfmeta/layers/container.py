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

from .base import Layer


class Composite(Layer):
    """A layer whose parameters and state are those of its named children."""

    def __init__(self, children):
        self.children = []
        for name, layer in children:
            if "." in name:
                raise ValueError(f"child name {name!r} must not contain '.'")
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
    """Children applied one after another."""

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

    def rop(self, p, cache, dp, dx):
        for (name, layer), c in zip(self.children, cache):
            dpk = self.sub(dp, name)
            if dx is None and not dpk:
                continue  # zero direction in, zero direction out
            dx = layer.rop(self.sub(p, name), c, dpk or None, dx)
        return dx

    def backward(self, p, cache, dy, dp_out, need_dx=True):
        # The input cotangent of child k is needed only if child k is not the
        # first one, or if the caller asked for it, or if an earlier child has
        # parameters -- i.e. for every child after the first parameterised one.
        first_param = next((k for k, (_, l) in enumerate(self.children) if l.param_specs()),
                           len(self.children))
        for k in range(len(self.children) - 1, -1, -1):
            name, layer = self.children[k]
            need = need_dx or k > first_param
            dy = layer.backward(self.sub(p, name), cache[k], dy, self.sub(dp_out, name), need)
            if dy is None:
                return None
        return dy

    def new_state(self, state, cache, momentum):
        out = dict(state)
        for (name, layer), c in zip(self.children, cache):
            sub = self.sub(state, name)
            if sub:
                for k, v in layer.new_state(sub, c, momentum).items():
                    out[f"{name}.{k}"] = v
        return out
