"""Finite-difference checks of hand-written derivatives (shipped, like Chainer's).

A differentiable map is given as three callables on flat float64 vectors::

    f(theta)    -> y        (flat)
    jvp(v)      -> J v      (flat, at the point theta0)
    vjp(u)      -> Jᵀ u     (flat, at the point theta0)

and three checks are run, each returning a relative error
``‖a − b‖ / max(‖a‖, ‖b‖, tiny)``:

* **rop**      ``J v`` against the central difference of ``f`` along ``v``
* **backward** ``Jᵀ u`` against central differences of ``⟨u, f⟩``, one
  coordinate at a time (all coordinates when few, a random subset otherwise)
* **adjoint**  ``⟨u, J v⟩ = ⟨Jᵀ u, v⟩`` (no finite differences: exact up to rounding)

Central differences use the fourth-order stencil
``(8[f(θ+h) − f(θ−h)] − [f(θ+2h) − f(θ−2h)]) / 12h`` so that in float64
truncation (O(h⁴)) and rounding (O(ε/h)) errors both sit far below 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend

TOL = 1e-6


@dataclass
class CheckResult:
    name: str          # what was checked, e.g. "conv 3x3 s2 p1"
    check: str         # "rop", "backward" or "adjoint"
    rel_error: float
    tol: float = TOL

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel_error) and self.rel_error < self.tol)

    def __str__(self):
        flag = "ok" if self.ok else "FAIL"
        return f"{self.name:40s} {self.check:9s} {self.rel_error:10.2e}  {flag}"


class GradcheckError(AssertionError):
    """Raised by :func:`assert_all_ok` with a table of what differed."""


def rel_error(a, b) -> float:
    a = np.asarray(backend.asnumpy(a), dtype=np.float64).ravel()
    b = np.asarray(backend.asnumpy(b), dtype=np.float64).ravel()
    scale = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / scale)


def central_difference(f, theta, v, h):
    """Fourth-order central difference of ``f`` at ``theta`` along ``v`` (step ``h·v``)."""
    f1 = f(theta + h * v) - f(theta - h * v)
    f2 = f(theta + 2 * h * v) - f(theta - 2 * h * v)
    return (8 * f1 - f2) / (12 * h)


def directional_difference(f, theta, v, h):
    """Central difference along the unit vector ``v/‖v‖``, scaled back by ``‖v‖``.

    A long random direction in many dimensions then moves the point by ``h``
    in norm, not by ``h·‖v‖`` -- which would carry ReLU inputs across their
    kink and make a correct derivative look wrong.
    """
    xp = backend.get_array_module(v)
    norm = float(xp.linalg.norm(v))
    if norm == 0.0:
        return f(theta) * 0
    return central_difference(f, theta, v / norm, h) * norm


def check_map(name, f, jvp, vjp, theta0, rng=None, h=1e-5, max_coords=60,
              n_directions=2, tol=TOL):
    """Run the rop, backward and adjoint checks; return three :class:`CheckResult`."""
    rng = np.random.default_rng(0) if rng is None else rng
    xp = backend.get_array_module(theta0)
    y0 = f(theta0)

    def rand(n):
        return xp.asarray(rng.standard_normal(n), dtype=theta0.dtype)

    # R-op: J v against differences of f along v, several random directions
    errs = []
    for _ in range(n_directions):
        v = rand(theta0.size)
        errs.append(rel_error(jvp(v), directional_difference(f, theta0, v, h)))
    rop = CheckResult(name, "rop", max(errs), tol)

    # backward: Jᵀu against per-coordinate differences of <u, f>
    u = rand(y0.size)
    g = backend.asnumpy(vjp(u))
    n = theta0.size
    coords = np.arange(n) if n <= max_coords else np.sort(rng.choice(n, max_coords, replace=False))
    fd = np.empty(len(coords))
    e = xp.zeros(n, dtype=theta0.dtype)
    for j, c in enumerate(coords):
        e[c] = 1
        fd[j] = float((u * central_difference(f, theta0, e, h)).sum())
        e[c] = 0
    bwd = CheckResult(name, "backward", rel_error(g[coords], fd), tol)

    # adjoint identity, with fresh directions
    v, u = rand(n), rand(y0.size)
    lhs = float((u * jvp(v)).sum())
    rhs = float((vjp(u) * v).sum())
    adj = CheckResult(name, "adjoint", abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300), tol)
    return [rop, bwd, adj]


# ----------------------------------------------------------------------------
# adaptors: a layer or a model as a map of flat vectors
# ----------------------------------------------------------------------------
def random_point(layer, in_shape, batch=2, seed=0, xp=np, dtype=np.float64):
    """Build ``layer`` and draw a generic point: ``(x, params, state)``.

    Parameters are the layer's initialisation plus N(0, 0.1²) noise (so zero
    biases and unit gammas are not special points); running statistics, if
    any, are perturbed too (variances upwards).
    """
    rng = np.random.default_rng(seed)
    layer.build(in_shape)
    params = layer.init_params(rng)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    x = rng.standard_normal((batch,) + tuple(in_shape))
    state = {n: xp.asarray(v + 0.2 * rng.random(s) if "var" in n else v + 0.1 * rng.standard_normal(s),
                           dtype=dtype) for n, s, v in layer.state_specs()} or None
    return x, params, state


def layer_map(layer, in_shape, batch=2, train=True, seed=0, xp=np, dtype=np.float64):
    """A built layer as ``theta = [x.ravel(), params...] -> y.ravel()``.

    Returns ``(f, jvp, vjp, theta0)``.  Parameters are packed in
    ``layer.param_specs()`` order after the input.
    """
    x, params, state = random_point(layer, in_shape, batch, seed, xp, dtype)
    specs = layer.param_specs()
    sizes = [x.size] + [int(np.prod(s)) for _, s, _ in specs]
    offsets = np.cumsum([0] + sizes)

    def unpack(theta):
        xin = theta[:x.size].reshape(x.shape)
        p = {name: theta[offsets[k + 1]:offsets[k + 2]].reshape(shape)
             for k, (name, shape, _) in enumerate(specs)}
        return xin, p

    theta0 = xp.asarray(np.concatenate([x.ravel()] + [params[n].ravel() for n, _, _ in specs]),
                        dtype=dtype)
    x0, p0 = unpack(theta0)
    y0, cache0 = layer.forward(p0, x0, train, state)

    def f(theta):
        xin, p = unpack(theta)
        return layer.forward(p, xin, train, state)[0].ravel()

    def jvp(v):
        dx, dp = unpack(v)
        dy = layer.rop(p0, cache0, dp or None, dx)
        return dy.ravel()

    def vjp(u):
        out = xp.empty_like(theta0)
        dx_view, dp_out = unpack(out)
        dx = layer.backward(p0, cache0, u.reshape(y0.shape), dp_out, True)
        dx_view[...] = dx
        return out

    return f, jvp, vjp, theta0


def model_map(model, x, train=True, state=None, seed=0):
    """A model as ``w -> logits.ravel()`` at input ``x``; returns ``(f, jvp, vjp, w0)``."""
    w0 = model.init(seed)
    rng = np.random.default_rng(seed + 1)
    xp = backend.get_array_module(w0)
    w0 = w0 + xp.asarray(0.05 * rng.standard_normal(w0.size), dtype=w0.dtype)
    lin = model.linearize(w0, x, train, state)

    def f(w):
        return model.linearize(w, x, train, state).output.ravel()

    def jvp(v):
        return lin.rop(v).ravel()

    def vjp(u):
        return lin.backward(u.reshape(lin.output.shape))

    return f, jvp, vjp, w0


def format_table(results) -> str:
    lines = [f"{'what':40s} {'check':9s} {'rel.error':>10s}  ", "-" * 66]
    lines += [str(r) for r in results]
    worst = max((r.rel_error for r in results), default=0.0)
    bad = sum(not r.ok for r in results)
    lines.append("-" * 66)
    lines.append(f"{len(results)} checks, {bad} failed, largest relative error {worst:.2e}")
    return "\n".join(lines)


def assert_all_ok(results):
    """Raise :class:`GradcheckError` listing every failed check."""
    bad = [r for r in results if not r.ok]
    if bad:
        raise GradcheckError("derivative checks failed:\n" + "\n".join(str(r) for r in bad))


def check_backward_rop(name, layer, in_shape, batch=2, train=True, seed=0, h=1e-5,
                       n_directions=2, tol=TOL, xp=np):
    """Check ``layer.backward_rop`` (the R-operator of the backward pass).

    The backward pass is a map ``(x, p, dy) -> (x̄, p̄)``.  Its directional
    derivative along ``(dx, dp, ddy)`` is what the exact Hessian-vector product
    needs; it is compared with the central difference of ``backward`` itself
    (forward re-run at every shifted point), in float64 on ``xp``'s device.
    Returns one :class:`CheckResult`.
    """
    rng = np.random.default_rng(seed + 7)
    _, _, _, theta0 = layer_map(layer, in_shape, batch, train, seed, xp)
    state = random_point(layer, in_shape, batch, seed, xp)[2]
    specs = layer.param_specs()
    n_in = batch * int(np.prod(in_shape))
    out_shape = (batch,) + tuple(layer.out_shape)
    n_out = int(np.prod(out_shape))
    sizes = [n_in] + [int(np.prod(s)) for _, s, _ in specs]
    offsets = np.cumsum([0] + sizes)

    def unpack(theta):
        xin = theta[:n_in].reshape((batch,) + tuple(in_shape))
        p = {nm: theta[offsets[k + 1]:offsets[k + 2]].reshape(sh)
             for k, (nm, sh, _) in enumerate(specs)}
        return xin, p

    def backward_at(z):
        theta, dy = z[:theta0.size], z[theta0.size:].reshape(out_shape)
        xin, p = unpack(theta)
        _, cache = layer.forward(p, xin, train, state)
        out = xp.empty_like(theta)
        dx_view, dp_out = unpack(out)
        dx_view[...] = layer.backward(p, cache, dy, dp_out, True)
        return out

    dy0 = xp.asarray(rng.standard_normal(n_out), dtype=theta0.dtype)
    z0 = xp.concatenate([theta0, dy0])
    x0, p0 = unpack(theta0)
    _, cache0 = layer.forward(p0, x0, train, state)
    errs = []
    for _ in range(n_directions):
        v = xp.asarray(rng.standard_normal(z0.size), dtype=theta0.dtype)
        dx, dp = unpack(v[:theta0.size])
        ddy = v[theta0.size:].reshape(out_shape)
        out = xp.empty_like(theta0)
        ddx_view, ddp_out = unpack(out)
        ddx_view[...] = layer.backward_rop(p0, cache0, dy0.reshape(out_shape), dp or None, dx,
                                           ddy, ddp_out, True)
        errs.append(rel_error(out, directional_difference(backward_at, z0, v, h)))
    return CheckResult(name, "bwd-rop", max(errs), tol)

