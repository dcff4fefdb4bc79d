"""Benchmarks behind ``hfmeta bench`` (timings are medians over repeats, one run).

Each item is timed on one model, batch and dtype, all in the same process so
that ratios between items (MLHF step / SGD step, Gv / forward+backward) are
meaningful on a noisy machine:

=========  ===================================================================
item       what is timed
=========  ===================================================================
fwdbwd     forward + backward (gradient) at a fresh point
gvp        one Gauss-Newton-vector product at a kept linearization
pcg        one PCG solve with n = 4 (5 products with G + diag(s))
sgd        one SGD step            (includes its forward + backward)
adam       one Adam step
kfac       one K-FAC step, default settings: the median is a step without the
           inversion that comes every ``inverse_every`` (20) steps
mlhf       one MLHF step (untrained meta-nets; the cost does not depend on them)
mlhf-q     one MLHF step with a quarter-size curvature batch
unroll     one MLHF meta-training unroll (T = 10 by default, its own batch size)
=========  ===================================================================

Peak memory of ``unroll`` is measured with :mod:`tracemalloc` on NumPy (which
reports every array allocation to it) and with CuPy's memory pool on the GPU.
BLAS threads: set ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` *before*
starting Python; on a loaded machine, fewer threads than cores avoids the
busy-waiting collapse of OpenBLAS.
"""
from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy as np

from . import backend
from .models import build
from .problem import Problem

ITEMS = ("fwdbwd", "gvp", "pcg", "sgd", "adam", "kfac", "mlhf", "mlhf-q", "unroll")


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def median_time(fn, repeats, xp=np, warmup=1):
    """Median wall time of ``fn()`` in seconds (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(xp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch(model, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + model.in_shape).astype(model.dtype)
    y = rng.integers(0, model.classes, batch_size)
    return backend.to_device(x, model.device), backend.to_device(y, model.device)


def _optimizer_step(problem, opt, w, batch):
    state = opt.init(w)
    opt.step(problem, w, state, batch)          # warm start (LSTM states, factors)
    return lambda: opt.step(problem, w, state, batch)


def run(model_name="convnet", in_shape=(3, 32, 32), classes=10, batch_size=128,
        dtype="float32", device="cpu", items=ITEMS, repeats=5, unroll_T=10,
        unroll_batch=64, model_options=None, progress=None):
    """Time ``items``; returns ``{item: {"seconds": s, ...}}``."""
    model = build(model_name, in_shape, classes, dtype=dtype, device=device,
                  **(model_options or {}))
    problem = Problem(model)
    xp = model.xp
    w = model.init(0)
    batch = _batch(model, batch_size)
    results = {}

    def record(item, fn, **extra):
        if progress:
            progress(item)
        results[item] = {"seconds": median_time(fn, repeats, xp), **extra}

    if "fwdbwd" in items:
        record("fwdbwd", lambda: problem.loss_and_grad(w, batch))
    if "gvp" in items or "pcg" in items:
        _, g, lin = problem.loss_and_grad(w, batch)
        v = xp.asarray(np.random.default_rng(1).standard_normal(model.num_params), model.dtype)
        if "gvp" in items:
            record("gvp", lambda: problem.gvp(lin, v))
        if "pcg" in items:
            from .pcg import pcg
            s = xp.full(model.num_params, 1e-2, dtype=model.dtype)
            record("pcg", lambda: pcg(lambda u: problem.gvp(lin, u, s), g, None, None, 4,
                                      record=False))
        del lin
    from .optim import get_optimizer
    for item, make in (("sgd", lambda: get_optimizer("sgd", lr=0.01)),
                       ("adam", lambda: get_optimizer("adam")),
                       ("kfac", lambda: get_optimizer("kfac"))):
        if item in items:
            record(item, _optimizer_step(problem, make(), w, batch))
    if "mlhf" in items or "mlhf-q" in items:
        from .meta.mlhf import MLHF
        if "mlhf" in items:
            record("mlhf", _optimizer_step(problem, MLHF.from_meta(None, model, untrained=True),
                                           w, batch))
        if "mlhf-q" in items:
            opt = MLHF.from_meta(None, model, untrained=True, curvature_batch=batch_size // 4)
            record("mlhf-q", _optimizer_step(problem, opt, w, batch))
    if "unroll" in items:
        results["unroll"] = time_unroll(problem, unroll_T, unroll_batch, progress)
    return model, results


def time_unroll(problem, T, batch_size, progress=None):
    """Wall time and peak memory of one MLHF meta-training unroll of T steps."""
    from .meta.mlhf_train import unroll
    from .meta.mlhf import MLHFNets
    model, xp = problem.model, problem.model.xp
    if progress:
        progress("unroll")
    nets = MLHFNets(b_mt=batch_size)
    theta = nets.init(0, xp, model.dtype)
    rows = nets.rows(model.layout)
    batches = [_batch(model, batch_size, seed=k) for k in range(T + 1)]
    w = model.init(0)

    def once():
        states = nets.zero_states(rows, xp, model.dtype)
        return unroll(nets, theta, problem, w, states, None, None, batches, rows)

    if xp is np:
        tracemalloc.start()
        t0 = time.perf_counter()
        once()
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    else:
        pool = xp.get_default_memory_pool()
        pool.free_all_blocks()
        base = pool.used_bytes()
        t0 = time.perf_counter()
        once()
        _sync(xp)
        seconds = time.perf_counter() - t0
        peak = pool.total_bytes() - base          # pool high-water mark
    return {"seconds": seconds, "peak_bytes": int(peak), "T": T, "batch": batch_size}


def format_table(model, results, batch_size):
    base = results.get("sgd", {}).get("seconds")
    fb = results.get("fwdbwd", {}).get("seconds")
    lines = [f"{model.name}: {model.num_params:,} parameters, inputs {model.in_shape}, "
             f"batch {batch_size}, {model.dtype}, {model.device}",
             f"{'item':10s} {'median ms':>10s} {'÷ fwd+bwd':>10s} {'÷ SGD step':>11s}  notes"]
    for item, r in results.items():
        ms = 1000 * r["seconds"]
        ratio_fb = f"{r['seconds'] / fb:10.2f}" if fb else f"{'':10s}"
        ratio_sgd = f"{r['seconds'] / base:11.2f}" if base else f"{'':11s}"
        note = ""
        if "peak_bytes" in r:
            note = f"T={r['T']}, batch {r['batch']}, peak {r['peak_bytes'] / 2 ** 30:.2f} GiB"
        lines.append(f"{item:10s} {ms:10.1f} {ratio_fb} {ratio_sgd}  {note}")
    return "\n".join(lines)
