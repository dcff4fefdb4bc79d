"""The flat parameter vector and its layout.

All of ``w``, gradients, CG directions ``v``, products ``Gv``, the MLHF damping
``s`` and preconditioner ``P``, and the outputs of the coordinate-wise meta-nets
are 1-D arrays of one length ``layout.size``.  A :class:`ParamLayout` says where
each named tensor lives in that vector.

Tensors are ordered first by *kind* -- the six parameter types of the MLHF
paper (Chen, Lu & Fokoue 2019, section 3)::

    conv.weight, conv.bias, fc.weight, fc.bias, bn.gamma, bn.beta

-- then by their order in the network, so every kind is one contiguous slice
``vec[layout.kind_slice(kind)]`` and a meta-net for a kind needs no gather.
``layout.views(vec)`` returns reshaped views (no copies) per tensor name.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("conv.weight", "conv.bias", "fc.weight", "fc.bias", "bn.gamma", "bn.beta")


@dataclass(frozen=True)
class ParamSpec:
    """One named tensor: where it lives in the flat vector and what it is."""
    name: str          # e.g. "block1.conv2.weight"
    shape: tuple
    kind: str          # one of KINDS
    layer: str         # the owning layer's name, e.g. "block1.conv2"
    offset: int = 0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


class ParamLayout:
    """Names, shapes, offsets and kinds of a model's parameters.

    Parameters
    ----------
    specs : iterable of (name, shape, kind, layer)
        In network order; the layout reorders them by kind.
    """

    def __init__(self, specs):
        specs = list(specs)
        for name, shape, kind, layer in specs:
            if kind not in KINDS:
                raise ValueError(f"parameter {name!r} has unknown kind {kind!r}")
        names = [s[0] for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate parameter names in layout")
        order = sorted(range(len(specs)), key=lambda i: (KINDS.index(specs[i][2]), i))
        self.specs: list[ParamSpec] = []
        offset = 0
        for i in order:
            name, shape, kind, layer = specs[i]
            spec = ParamSpec(name, tuple(int(d) for d in shape), kind, layer, offset)
            self.specs.append(spec)
            offset += spec.size
        self.size = offset
        self._by_name = {s.name: s for s in self.specs}
        self._kind_slices = {}
        for kind in KINDS:
            members = [s for s in self.specs if s.kind == kind]
            if members:
                self._kind_slices[kind] = slice(members[0].offset,
                                                members[-1].offset + members[-1].size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, name: str) -> ParamSpec:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def kinds(self) -> list[str]:
        """The kinds present in this layout, in flat-vector order."""
        return list(self._kind_slices)

    def kind_slice(self, kind: str) -> slice:
        """The contiguous slice of the flat vector holding every tensor of ``kind``."""
        if kind not in self._kind_slices:
            raise KeyError(f"layout has no parameters of kind {kind!r}")
        return self._kind_slices[kind]

    def layers(self) -> list[str]:
        """Owning layer names, in order of first appearance in the flat vector."""
        return list(dict.fromkeys(s.layer for s in self.specs))

    def layer_specs(self, layer: str) -> list[ParamSpec]:
        return [s for s in self.specs if s.layer == layer]

    def views(self, vec) -> dict:
        """``{name: vec[slice].reshape(shape)}`` -- views, never copies."""
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise ValueError(f"flat vector has shape {vec.shape}, layout needs ({self.size},)")
        return {s.name: vec[s.slice].reshape(s.shape) for s in self.specs}

    def flatten(self, tensors: dict, xp=np, dtype=None):
        """Pack ``{name: array}`` into a new flat vector (inverse of :meth:`views`)."""
        first = tensors[self.specs[0].name] if self.specs else None
        dtype = dtype or (first.dtype if first is not None else np.float64)
        vec = xp.empty(self.size, dtype=dtype)
        for s in self.specs:
            t = tensors[s.name]
            if tuple(t.shape) != s.shape:
                raise ValueError(f"{s.name}: shape {tuple(t.shape)} != layout {s.shape}")
            vec[s.slice] = t.reshape(-1)
        return vec

    def describe(self) -> str:
        """A table of name, kind, shape, offset, size (for `hfmeta info`)."""
        rows = [f"{'name':32s} {'kind':12s} {'shape':20s} {'offset':>9s} {'size':>9s}"]
        for s in self.specs:
            rows.append(f"{s.name:32s} {s.kind:12s} {str(s.shape):20s} {s.offset:9d} {s.size:9d}")
        rows.append(f"{'total':32s} {'':12s} {'':20s} {'':9s} {self.size:9d}")
        return "\n".join(rows)
