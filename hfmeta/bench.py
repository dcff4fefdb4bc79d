"""Benchmarks behind ``hfmeta bench`` (timings are medians over repeats, one run;
``unroll`` is one timed call).

Each item is timed on one model, batch and dtype, all in the same process so
that ratios between items (MLHF step / SGD step, Gv / forward+backward) are
meaningful on a noisy machine:

=============  ===============================================================
item           what is timed
=============  ===============================================================
fwdbwd         forward + backward (gradient) at a fresh point
gvp            one Gauss-Newton-vector product at a kept linearization
pcg            one PCG solve with n = 4 (4 products with G + diag(s): zero start)
sgd, adam, …   one step of each hand-crafted optimizer (default settings; the
               K-FAC median is a step without the inversion that comes every
               20 steps; HF's cost follows its CG iterations)
mlhf, l2l,     one step of each learned optimizer
slstm
mlhf-q         one MLHF step with a quarter-size curvature batch (at least
               1 example)
unroll         one MLHF meta-training unroll (T = 10, its own batch size): one
               call, after an untimed one (see :func:`time_unroll`)
=============  ===============================================================

Items are timed round-robin (:func:`interleaved_medians`).

``--compare-torch`` adds ``torch-fwdbwd`` and ``torch-gvp``: the same net
and weights in PyTorch (autograd; ``torch.func`` jvp + vjp), timed in the
same round-robin, see :mod:`hfmeta.bench_torch`.

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

BASIC = ("fwdbwd", "gvp", "pcg")
LEARNED = ("mlhf", "mlhf-q", "l2l", "slstm")


def all_items():
    from .optim import OPTIMIZERS
    return BASIC + tuple(OPTIMIZERS) + LEARNED + ("unroll",)


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
GPU_WARM_SECONDS = 3.0     # untimed round-robin work before timing on the GPU


def interleaved_medians(fns, repeats, xp=np, warmup=1, clock="wall", warm_seconds=0.0):
    """Median time (s) of each ``fns[name]()``, timed round-robin.

    One call of every function per round, ``repeats`` rounds, so a load that
    comes and goes on a shared machine hits every item alike and the *ratios*
    stay fair.  The device is synchronised around every call.  Before timing,
    ``warmup`` calls of each function, then untimed rounds until
    ``warm_seconds`` have passed (a GPU's clock ramps up over the first
    seconds of work: without them the first items of a run measured up to
    1.7 × slower on an H200).  ``clock``:
    ``"wall"`` (:func:`time.perf_counter`) or ``"cpu"`` (:func:`time.process_time`,
    the CPU time of this process summed over its threads: much less sensitive
    to other processes on a shared machine, and equal to wall time for a
    single-threaded CPU run that does not wait; meaningless on the GPU).
    """
    now = CLOCKS[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    start = time.perf_counter()
    while time.perf_counter() - start < warm_seconds:
        for fn in fns.values():
            fn()
        _sync(xp)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(xp)
            t0 = now()
            fn()
            _sync(xp)
            times[name].append(now() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _batch(model, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + model.in_shape).astype(model.dtype)
    y = rng.integers(0, model.classes, batch_size)
    return backend.to_device(x, model.device), backend.to_device(y, model.device)


def _direction(model):
    """The seeded direction v of the timed Gv products, on the model's device."""
    return model.xp.asarray(np.random.default_rng(1).standard_normal(model.num_params),
                            model.dtype)


def _stepper(problem, opt, w, batch):
    """A closure taking one optimizer step from ``w``; the state carries over
    between calls (K-FAC refreshes its inverses every 20 calls, as in training)."""
    box = {"state": opt.init(w)}

    def step():
        _, box["state"], _ = opt.step(problem, w, box["state"], batch)
    return step


def _make_optimizer(name, model, batch_size):
    """Optimizer ``name`` with default settings (learned ones untrained); ``mlhf-q`` is
    MLHF with a curvature batch of a quarter of ``batch_size``, at least 1 example."""
    from .optim import OPTIMIZERS, get_optimizer
    if name in OPTIMIZERS:
        return get_optimizer(name)
    from .meta.registry import get_learned
    if name == "mlhf-q":
        return get_learned("mlhf", model=model, untrained=True,
                           curvature_batch=max(1, batch_size // 4))
    return get_learned(name, model=model, untrained=True)


def run(model_name="convnet", in_shape=(3, 32, 32), classes=10, batch_size=128,
        dtype="float32", device="cpu", items=None, repeats=5, unroll_T=10,
        unroll_batch=64, model_options=None, progress=None, compare_torch=False,
        clock="wall", warm_seconds=None):
    """Time ``items`` (default: all); returns ``(model, {item: {"seconds": s, ...}})``.

    Learned optimizers run with untrained meta-nets: their cost does not
    depend on the meta-parameters.  ``clock`` and ``warm_seconds`` (default:
    3 s on the GPU, none on the CPU): see :func:`interleaved_medians`.
    """
    if warm_seconds is None:
        warm_seconds = GPU_WARM_SECONDS if device == "gpu" else 0.0
    items = tuple(items or all_items())
    model = build(model_name, in_shape, classes, dtype=dtype, device=device,
                  **(model_options or {}))
    problem = Problem(model)
    xp = model.xp
    w = model.init(0)
    batch = _batch(model, batch_size)
    fns = {}
    if "fwdbwd" in items:
        fns["fwdbwd"] = lambda: problem.loss_and_grad(w, batch)
    if "gvp" in items or "pcg" in items:
        _, g, lin = problem.loss_and_grad(w, batch)
        v = _direction(model)
        s = xp.full(model.num_params, 1e-2, dtype=model.dtype)
        if "gvp" in items:
            fns["gvp"] = lambda: problem.gvp(lin, v)
        if "pcg" in items:
            from .pcg import pcg
            fns["pcg"] = lambda: pcg(lambda u: problem.gvp(lin, u, s), g, None, None, 4,
                                     record=False)
    for name in items:
        if name not in BASIC and name != "unroll":
            fns[name] = _stepper(problem, _make_optimizer(name, model, batch_size), w, batch)
    logit_diff = None
    if compare_torch:
        from .bench_torch import torch_items
        torch_fns, logit_diff = torch_items(model, w, batch)
        fns.update(torch_fns)
    if progress and fns:
        progress(", ".join(fns))
    medians = interleaved_medians(fns, repeats, xp, clock=clock, warm_seconds=warm_seconds)
    results = {name: {"seconds": sec} for name, sec in medians.items()}
    if logit_diff is not None:
        for ours, theirs in (("fwdbwd", "torch-fwdbwd"), ("gvp", "torch-gvp")):
            if ours in results:
                results[ours]["vs_torch"] = results[ours]["seconds"] / results[theirs]["seconds"]
        results["torch-fwdbwd"]["max_logit_diff"] = logit_diff
    if "unroll" in items:
        results["unroll"] = time_unroll(problem, unroll_T, unroll_batch, progress, clock)
    return model, results


def unroll_call(problem, T, batch_size):
    """A closure running one MLHF meta-training unroll of T steps (untrained
    meta-nets, batches of ``batch_size``) from the same start each call."""
    from .meta.mlhf_train import unroll
    from .meta.mlhf import MLHFNets
    model, xp = problem.model, problem.model.xp
    nets = MLHFNets(b_mt=batch_size)
    theta = nets.init(0, xp, model.dtype)
    rows = nets.rows(model.layout)
    batches = [_batch(model, batch_size, seed=k) for k in range(T + 1)]
    w = model.init(0)

    def once():
        states = nets.zero_states(rows, xp, model.dtype)
        return unroll(nets, theta, problem, w, states, None, None, batches, rows,
                      record=False)             # as MetaTrainer.meta_step
    return once


def time_unroll(problem, T, batch_size, progress=None, clock="wall"):
    """Time (``clock`` as :func:`interleaved_medians`) and peak memory of one MLHF
    meta-training unroll of T steps: one call, after an untimed one.  On NumPy the
    untimed call measures the peak (:mod:`tracemalloc` slows every allocation, by
    ~15% on this unroll, so it is not timed); on the GPU it compiles CuPy's kernels
    (H200, convnet: 10.0 s cold, 1.0 s warm) and the timed call gives the peak."""
    xp = problem.model.xp
    if progress:
        progress("unroll")
    once = unroll_call(problem, T, batch_size)
    now = CLOCKS[clock]
    if xp is np:
        tracemalloc.start()
        once()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t0 = now()
        once()
        seconds = now() - t0
    else:
        once()
        pool = xp.get_default_memory_pool()
        _sync(xp)
        pool.free_all_blocks()
        base = pool.used_bytes()
        t0 = now()
        once()
        _sync(xp)
        seconds = now() - t0
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
        if "vs_torch" in r:
            note = f"hfmeta / PyTorch = {r['vs_torch']:.2f}"
        if "max_logit_diff" in r:
            note = f"same weights: max |logit difference| {r['max_logit_diff']:.1e}"
        if "peak_bytes" in r:
            note = f"T={r['T']}, batch {r['batch']}, peak {r['peak_bytes'] / 2 ** 30:.2f} GiB"
        lines.append(f"{item:10s} {ms:10.1f} {ratio_fb} {ratio_sgd}  {note}")
    return "\n".join(lines)
