"""Preconditioned conjugate gradient (MLHF supplement, Algorithm 1) and its backward pass.

Solve ``A x = b`` for symmetric positive definite ``A`` given only products
``v -> A v``, a diagonal preconditioner ``P`` (vector; ``y = r / P``), a start
``x0``, at most ``n`` iterations and a threshold ``eps``::

    r_0 = b − A x_0,   y_0 = r_0 / P,   p_0 = y_0,   ρ_0 = ⟨r_0, y_0⟩
    while ‖r_i‖ ≥ eps and i < n:
        α_i     = ρ_i / max(⟨p_i, A p_i⟩, CURVATURE_FLOOR)
        x_{i+1} = x_i + α_i p_i,      r_{i+1} = r_i − α_i A p_i
        y_{i+1} = r_{i+1} / P,        ρ_{i+1} = ⟨r_{i+1}, y_{i+1}⟩
        β_{i+1} = ρ_{i+1} / max(ρ_i, RHO_FLOOR)
        p_{i+1} = y_{i+1} + β_{i+1} p_i

n + 1 products with A (Chen, Lu & Fokoue 2019, AAAI; the max() guards are
those of the authors' released code, see METHODS.md).  α, β stay 0-d arrays
on the device; the only host sync is the stopping test, skipped when
``eps == 0`` (MLHF uses eps = 0, n = 4).  When a guard's floor replaced the
true denominator the result says so (``result.guards``) instead of producing
a NaN.

:func:`pcg_backward` is reverse-mode differentiation through every iteration
for ``A = G + diag(s)`` with the *self-gradient trick* of MLHF section 3.1: the
adjoint of ``u = A v`` is ``v̄ += A ū`` (A symmetric) and ``s̄ += ū ⊙ v``; no
gradient flows into G itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import backend

#: floor of the curvature ⟨p, A p⟩ in α (released MLHF code)
CURVATURE_FLOOR = 1e-6
#: floor of the previous ρ = ⟨r, P⁻¹ r⟩ in β (released MLHF code)
RHO_FLOOR = 1e-6


@dataclass
class PCGResult:
    """What :func:`pcg` returns: the solution, the residual, and the tape for the backward.

    ``x`` = x_k, ``r`` = r_k = b − A x_k after ``iterations`` = k ≤ n steps;
    ``products`` counts products with A.  ``alphas``, ``betas``, ``rhos``,
    ``curvatures`` (⟨p_i, A p_i⟩) are lists of 0-d arrays.  When recorded,
    ``ps``, ``Aps`` (p_i and A p_i, i < k) and ``rs`` (r_0 … r_k) are kept.
    """
    x: object
    r: object
    iterations: int
    products: int
    b: object
    x0: object
    P: object
    curvature_floor: float
    rho_floor: float
    alphas: list = field(default_factory=list)
    betas: list = field(default_factory=list)
    rhos: list = field(default_factory=list)
    curvatures: list = field(default_factory=list)
    ps: list = field(default_factory=list)
    Aps: list = field(default_factory=list)
    rs: list = field(default_factory=list)
    recorded: bool = True

    @property
    def residual_norm(self) -> float:
        """‖r_k‖ (a host sync)."""
        xp = backend.get_array_module(self.r)
        return float(xp.linalg.norm(self.r))

    @property
    def guards(self) -> tuple:
        """Which guards fired (a host sync): ``"non-positive curvature"`` when some
        ⟨p, A p⟩ ≤ 0, ``"zero denominator"`` when a positive ⟨p, A p⟩ fell below
        its floor or ρ_i fell below ``rho_floor`` in some β."""
        fired = []
        curv = [float(d) for d in self.curvatures]
        if any(d <= 0 for d in curv):
            fired.append("non-positive curvature")
        used_rhos = [float(r) for r in self.rhos[:len(self.betas)]]
        if any(0 < d < self.curvature_floor for d in curv) or \
                any(r < self.rho_floor for r in used_rhos):
            fired.append("zero denominator")
        return tuple(fired)


def _precondition(r, P):
    return r if P is None else r / P


def pcg(apply_A, b, x0=None, P=None, n=4, eps=0.0, curvature_floor=CURVATURE_FLOOR,
        rho_floor=RHO_FLOOR, record=True, r0=None) -> PCGResult:
    """Run at most ``n`` PCG iterations on ``A x = b`` (flat vectors).

    Parameters
    ----------
    apply_A : callable ``v -> A v`` (symmetric, ideally positive definite)
    b, x0 : right-hand side and start (``x0=None`` means zero and saves a product)
    P : diagonal preconditioner as a positive vector (``None`` = identity)
    n : maximum iterations; eps : stop when ‖r_i‖ < eps (0 = never test: no host sync)
    curvature_floor, rho_floor : the positive floors of the α and β denominators
    record : keep the iterates for :func:`pcg_backward` (memory: 3k + 1 vectors:
        p_i, A p_i for i < k and r_0 … r_k)
    r0 : the initial residual ``b − A x0`` when the caller already has it (MLHF
        feeds it to RNN_p before PCG starts); saves that product
    """
    if not (curvature_floor > 0 and rho_floor > 0):
        raise ValueError("PCG floors must be positive (they replace zero denominators)")
    xp = backend.get_array_module(b)
    if r0 is not None:
        r, products = r0, 0 if x0 is None else 1    # the caller paid for A x0
    elif x0 is None:
        r, products = b.copy(), 0
    else:
        r, products = b - apply_A(x0), 1
    x = xp.zeros_like(b) if x0 is None else x0.copy()
    y = _precondition(r, P)
    rho = xp.dot(r, y)
    p = y
    res = PCGResult(x, r, 0, products, b, x0, P, curvature_floor, rho_floor,
                    rhos=[rho], rs=[r] if record else [], recorded=record)
    for i in range(n):
        if eps > 0 and float(xp.linalg.norm(r)) < eps:
            break
        Ap = apply_A(p)
        res.products += 1
        curvature = xp.dot(p, Ap)
        alpha = rho / xp.maximum(curvature, curvature_floor)
        x = x + alpha * p
        r = r - alpha * Ap
        res.alphas.append(alpha)
        res.curvatures.append(curvature)
        if record:
            res.ps.append(p)
            res.Aps.append(Ap)
            res.rs.append(r)
        res.iterations = i + 1
        if i + 1 == n:
            break                          # p_{n} would never be used
        y = _precondition(r, P)
        rho_new = xp.dot(r, y)
        beta = rho_new / xp.maximum(rho, rho_floor)
        p = y + beta * p
        rho = rho_new
        res.betas.append(beta)
        res.rhos.append(rho)
    res.x, res.r = x, r
    return res


def pcg_backward(result: PCGResult, apply_A, x_bar=None, r_bar=None,
                 need=("s", "P", "b", "x0")) -> dict:
    """Gradients of a scalar ``L(x_k, r_k)`` through the PCG run in ``result``.

    ``x_bar`` = ∂L/∂x_k, ``r_bar`` = ∂L/∂r_k (``None`` = zero).  ``apply_A``
    must be the same operator ``v -> G v + s ⊙ v``.  Returns a dict with the
    keys in ``need``: ``"s"`` (damping vector), ``"P"`` (preconditioner),
    ``"b"``, ``"x0"``, each (N,) like ``b``.  G gets no gradient (MLHF's
    stop-gradient: the adjoint of u = A v = G v + s ⊙ v is v̄ += A ū,
    s̄ += ū ⊙ v; this includes r_0 = b − A x_0, so s̄ −= r̄_0 ⊙ x_0).  The
    iteration count is treated as fixed; each max() guard passes the gradient
    to its active branch.

    Cost: one product with A per PCG iteration (k), plus one more if ``"x0"``
    is needed -- about as many as the forward run.
    """
    if not result.recorded:
        raise ValueError("pcg_backward needs pcg(..., record=True)")
    R, P = result, result.P
    if "P" in need and P is None:
        raise ValueError("no gradient for P: the run used the identity preconditioner")
    xp = backend.get_array_module(R.b)
    zeros = xp.zeros_like(R.b)
    xb = zeros.copy() if x_bar is None else x_bar.copy()   # x̄_i (constant through the loop)
    rb = zeros.copy() if r_bar is None else r_bar.copy()   # r̄_{i+1}
    pb = zeros.copy()                                      # p̄_{i+1}
    rhob = xp.zeros((), dtype=R.b.dtype)                   # ρ̄_{i+1} (partial)
    sb = zeros.copy() if "s" in need else None
    Pb = zeros.copy() if "P" in need and P is not None else None
    k = R.iterations
    for i in range(k - 1, -1, -1):
        p, Ap, r_next = R.ps[i], R.Aps[i], R.rs[i + 1]
        alpha, rho, curvature = R.alphas[i], R.rhos[i], R.curvatures[i]
        if i + 1 < k:  # p_{i+1} = y_{i+1} + β_{i+1} p_i,  β_{i+1} = ρ_{i+1} / max(ρ_i, floor)
            denom = xp.maximum(rho, R.rho_floor)
            beta_bar = xp.dot(pb, p)
            rho_next_bar = rhob + beta_bar / denom
            rho_bar = -beta_bar * R.rhos[i + 1] / denom ** 2 * (rho >= R.rho_floor)
            y_next = _precondition(r_next, P)
            y_bar = pb + rho_next_bar * r_next             # from p_{i+1} and ρ_{i+1} = ⟨r, y⟩
            rb += rho_next_bar * y_next + _precondition(y_bar, P)
            if Pb is not None:
                Pb -= y_bar * y_next / P                   # y = r / P
            p_bar = R.betas[i] * pb
        else:
            rho_bar = xp.zeros((), dtype=R.b.dtype)
            p_bar = zeros.copy()
        # x_{i+1} = x_i + α p_i,  r_{i+1} = r_i − α A p_i
        alpha_bar = xp.dot(xb, p) - xp.dot(rb, Ap)
        Ap_bar = -alpha * rb
        p_bar += alpha * xb
        # α = ρ_i / max(⟨p_i, A p_i⟩, floor)
        denom = xp.maximum(curvature, R.curvature_floor)
        rho_bar += alpha_bar / denom
        curvature_bar = -alpha_bar * rho / denom ** 2 * (curvature >= R.curvature_floor)
        p_bar += curvature_bar * Ap
        Ap_bar += curvature_bar * p
        # A p_i = G p_i + s ⊙ p_i: self-gradient, A is its own adjoint
        p_bar += apply_A(Ap_bar)
        if sb is not None:
            sb += Ap_bar * p
        pb, rhob = p_bar, rho_bar
    # p_0 = y_0,  ρ_0 = ⟨r_0, y_0⟩,  y_0 = r_0 / P
    r0 = R.rs[0]
    y0 = _precondition(r0, P)
    y_bar = pb + rhob * r0
    rb += rhob * y0 + _precondition(y_bar, P)
    if Pb is not None:
        Pb -= y_bar * y0 / P
    # r_0 = b − A x_0
    grads = {}
    if "b" in need:
        grads["b"] = rb
    if "x0" in need:
        grads["x0"] = xb - apply_A(rb)            # also right at x0 = None (= 0)
    if sb is not None:
        if R.x0 is not None:
            sb -= rb * R.x0
        grads["s"] = sb
    if Pb is not None:
        grads["P"] = Pb
    return grads
