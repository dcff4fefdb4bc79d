"""The same network in PyTorch, for ``hfmeta bench --compare-torch``.

PyTorch is *never* needed by hfmeta; this module imports it only when asked
and says clearly when it is missing.  It mirrors a hfmeta model made of
Conv2d, Linear, BatchNorm, ReLU, pooling, Flatten and the ResNet-v2 block
(every zoo model) as a functional PyTorch network that
reads *the same flat parameter vector* through the same layout (the
conventions are PyTorch's: NCHW, conv weight (o, i, kh, kw), linear (o, i)),
checks that both give the same logits, and times

* forward + backward with autograd (the loss gradient w.r.t. all parameters),
* the Gauss-Newton product ``G v = Jᵀ H_l J v`` with ``torch.func``: ``jvp``
  of the logits along v, the cross-entropy Hessian ``(diag p − p pᵀ)/n`` at
  the output, and ``vjp`` back -- the standard autodiff way to get it.
"""
from __future__ import annotations

import numpy as np

from . import backend
from .errors import UserError
from .layers import (AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d,
                     PreActBlock, ReLU, Sequential)
from .layers.residual import BRANCH, PRE


def _torch():
    try:
        import torch
        import torch.func  # noqa: F401
    except ImportError:
        raise UserError("--compare-torch needs PyTorch (pip install torch); hfmeta itself "
                        "does not") from None
    return torch


def torch_function(model, torch):
    """``f(params: dict name -> tensor, x) -> logits`` mirroring ``model.net`` (train
    mode: batch norm normalises with the batch's statistics, as hfmeta's does)."""
    return _mirror(model.net, "", torch, model.name)


def _mirror(layer, path, torch, model_name):
    """The PyTorch function of one layer (composites: of their graph); ``path`` is
    the layer's dotted name, the prefix of its parameters in the flat layout."""
    F = torch.nn.functional
    name = (lambda local: f"{path}.{local}") if path else (lambda local: local)
    if isinstance(layer, Sequential):
        parts = [_mirror(child, name(child_name), torch, model_name)
                 for child_name, child in layer.children]

        def sequential(params, x):
            for part in parts:
                x = part(params, x)
            return x
        return sequential
    if isinstance(layer, PreActBlock):
        child = {n: _mirror(c, name(n), torch, model_name) for n, c in layer.children}

        def block(params, x):        # y = branch(a) + shortcut, a = relu1(bn1(x))
            a = x
            for n in PRE:
                a = child[n](params, a)
            h = a
            for n in BRANCH:
                h = child[n](params, h)
            return h + (child["proj"](params, a) if layer.has_projection else x)
        return block
    if isinstance(layer, Conv2d):
        return lambda params, x: F.conv2d(x, params[name("weight")], params.get(name("bias")),
                                          stride=layer.stride, padding=layer.padding)
    if isinstance(layer, Linear):
        return lambda params, x: F.linear(x, params[name("weight")], params.get(name("bias")))
    if isinstance(layer, BatchNorm):
        return lambda params, x: F.batch_norm(x, None, None, params[name("gamma")],
                                              params[name("beta")], training=True, eps=layer.eps)
    if isinstance(layer, ReLU):
        return lambda params, x: F.relu(x)
    if isinstance(layer, MaxPool2d):
        return lambda params, x: F.max_pool2d(x, layer.kernel, layer.stride, layer.padding)
    if isinstance(layer, AvgPool2d):
        return lambda params, x: F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding)
    if isinstance(layer, GlobalAvgPool):
        return lambda params, x: x.mean(dim=(2, 3))
    if isinstance(layer, Flatten):
        return lambda params, x: x.reshape(x.shape[0], -1)
    raise UserError(f"--compare-torch has no PyTorch mirror of {type(layer).__name__} "
                    f"({path} in {model_name})")


def torch_items(model, w, batch):
    """Closures timing PyTorch on ``model``'s net at ``w`` with ``batch``, to be
    timed round-robin with hfmeta's own items.

    Returns ``({"torch-fwdbwd": fn, "torch-gvp": fn}, max |logits − hfmeta logits|)``.
    """
    torch = _torch()
    from torch.func import jvp, vjp
    device = "cuda" if model.device == "gpu" else "cpu"
    dtype = getattr(torch, str(model.dtype))

    def to_t(a):
        return torch.as_tensor(backend.asnumpy(a), device=device, dtype=dtype)

    params = {name: to_t(view).requires_grad_(True) for name, view in model.layout.views(w).items()}
    x = to_t(batch[0])
    y = torch.as_tensor(backend.asnumpy(batch[1]), device=device)
    f = torch_function(model, torch)
    z_ours = backend.asnumpy(model.forward(w, batch[0], train=True))
    diff = float(np.abs(f(params, x).detach().cpu().numpy() - z_ours).max())

    def sync():
        """PyTorch's CUDA work is asynchronous and runs on PyTorch's own current
        stream: wait for it, so the round-robin times the work, not its launch."""
        if device == "cuda":
            torch.cuda.synchronize()

    def fwdbwd():
        torch.nn.functional.cross_entropy(f(params, x), y).backward()
        for p in params.values():
            p.grad = None
        sync()

    plain = {k: p.detach() for k, p in params.items()}
    v = {k: torch.randn_like(p) for k, p in plain.items()}

    def logits(ps):
        return f(ps, x)

    def gvp():
        z, jv = jvp(logits, (plain,), (v,))
        p = torch.softmax(z, dim=1)
        hjv = (p * jv - p * (p * jv).sum(dim=1, keepdim=True)) / z.shape[0]
        out = vjp(logits, plain)[1](hjv)
        sync()
        return out

    return {"torch-fwdbwd": fwdbwd, "torch-gvp": gvp}, diff
