"""Where the time of hfmeta's GPU (or CPU) items goes, in one short run.

    python docs/gpu_profile.py [--device gpu] [--out FILE]

For ``convnet`` and ``resnet-mini`` (batch 128, float32) it prints

1. forward+backward and Gv: the synchronised median, and how long the host
   takes to *issue* the same work (20 calls, one synchronisation at the end).
   Issue time close to the synchronised time means the host (Python, kernel
   launches) is the bottleneck, not the device;
2. the same two items layer by layer: every leaf layer's forward, R-op and
   backward is wrapped in synchronised timers (so the total is larger than the
   plain item's; the shares are what count);
3. convnet's conv2 on im2col against the FFT: forward+backward, Gv and an
   MLHF step, round-robin after a warm-up (:func:`section_conv2_ab`);
4. one MLHF meta-training unroll (T = 10, batch 64): cold (first call, which on
   the GPU includes compiling CuPy's kernels) and warm, and a cProfile of the
   warm call (top functions by own time);
5. a cProfile of five MLHF steps on convnet.

This is a diagnostic for developers; ``hfmeta bench`` gives the reported figures.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections import defaultdict

from hfmeta import backend
from hfmeta.bench import (_batch, _direction, _stepper, _sync, interleaved_medians,
                          unroll_call)
from hfmeta.meta.registry import get_learned
from hfmeta.models import build
from hfmeta.problem import Problem

LAYER_METHODS = ("forward", "rop", "backward", "backward_rop", "rop_after_relu",
                 "backward_before_relu")


def issue_time(fn, xp, calls=20):
    """(host seconds to issue ``calls`` calls, seconds until the device is done), per call."""
    _sync(xp)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    _sync(xp)
    t2 = time.perf_counter()
    return (t1 - t0) / calls, (t2 - t0) / calls


def wrap_layers(model, xp, totals):
    """Wrap every leaf layer's methods in synchronised timers adding to ``totals``."""
    originals = []
    for path, layer in model.net.leaves():
        for method in LAYER_METHODS:
            fn = getattr(layer, method, None)
            if fn is None:
                continue

            def timed(*args, _fn=fn, _key=(path, method), **kwargs):
                _sync(xp)
                t0 = time.perf_counter()
                out = _fn(*args, **kwargs)
                _sync(xp)
                totals[_key] += time.perf_counter() - t0
                return out
            setattr(layer, method, timed)
            originals.append((layer, method))
    return originals


def unwrap_layers(originals):
    for layer, method in originals:
        delattr(layer, method)


def per_layer(model, xp, fn, calls=5):
    totals = defaultdict(float)
    fn()
    originals = wrap_layers(model, xp, totals)
    _sync(xp)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(xp)
    wall = (time.perf_counter() - t0) / calls
    unwrap_layers(originals)
    rows = sorted(((k, v / calls) for k, v in totals.items()), key=lambda kv: -kv[1])
    lines = [f"    wrapped total {1e3 * wall:.2f} ms/call; layers {1e3 * sum(v for _, v in rows):.2f} ms"]
    lines += [f"    {path:28s} {method:22s} {1e3 * sec:8.3f} ms" for (path, method), sec in rows[:14]]
    return "\n".join(lines)


def profile_top(fn, n=25):
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    return "\n".join(line for line in s.getvalue().splitlines() if line.strip())


def timed_point(model):
    """``bench``'s point for ``model`` (batch 128): ``(problem, w, batch, g, items)`` with
    ``items`` the closures ``fwdbwd`` and ``gvp`` timed there."""
    problem, w = Problem(model), model.init(0)
    batch = _batch(model, 128)
    _, g, lin = problem.loss_and_grad(w, batch)
    v = _direction(model)
    items = {"fwdbwd": lambda: problem.loss_and_grad(w, batch), "gvp": lambda: problem.gvp(lin, v)}
    return problem, w, batch, g, items


def section_model(name, device, out):
    model = build(name, (3, 32, 32), 10, dtype="float32", device=device)
    xp = model.xp
    problem, w, _, _, items = timed_point(model)
    out(f"\n## {name} ({model.num_params:,} parameters), batch 128, float32, {device}")
    for item, fn in items.items():
        med = interleaved_medians({item: fn}, 10, xp)[item]
        issue, done = issue_time(fn, xp)
        out(f"  {item}: synced median {1e3 * med:.2f} ms; issue {1e3 * issue:.2f} ms/call, "
            f"done {1e3 * done:.2f} ms/call")
        out(per_layer(model, xp, fn))
    return model, problem, xp, w


def section_conv2_ab(device, out, repeats=40, warm_seconds=3.0):
    """convnet's conv2 on im2col and on the FFT, everything else equal: forward+backward,
    Gv and an MLHF step of both, timed round-robin (:func:`interleaved_medians`)
    after ``warm_seconds`` of the same work, so that neither the order nor a GPU
    clock still ramping up favours one of them."""
    fns, grads = {}, {}
    for algorithm in ("im2col", "fft"):
        model = build("convnet", (3, 32, 32), 10, dtype="float32", device=device)
        conv2 = dict(model.net.leaves())["conv2"]
        conv2.set_algorithm(algorithm, device)
        xp = model.xp
        problem, w, batch, grads[algorithm], items = timed_point(model)
        fns[f"fwdbwd {algorithm}"], fns[f"gvp {algorithm}"] = items["fwdbwd"], items["gvp"]
        fns[f"mlhf {algorithm}"] = _stepper(
            problem, get_learned("mlhf", model=model, untrained=True), w, batch)
    medians = interleaved_medians(fns, repeats, xp, warmup=0, warm_seconds=warm_seconds)
    g_im2col, g_fft = grads["im2col"], grads["fft"]
    out(f"\n## convnet conv2: im2col vs FFT, batch 128, float32, {device}, medians of "
        f"{repeats} round-robin rounds after {warm_seconds:.0f} s of warm-up")
    for item in ("fwdbwd", "gvp", "mlhf"):
        a, b = medians[f"{item} im2col"], medians[f"{item} fft"]
        out(f"  {item:7s} im2col {1e3 * a:8.2f} ms   fft {1e3 * b:8.2f} ms   "
            f"im2col / fft = {a / b:.2f}")
    out(f"  |g_im2col - g_fft| / |g| = "
        f"{float(xp.linalg.norm(g_im2col - g_fft) / xp.linalg.norm(g_fft)):.1e} (float32)")


def section_unroll(problem, xp, out, T=10, batch_size=64):
    unroll_once = unroll_call(problem, T, batch_size)

    def once():
        unroll_once()
        _sync(xp)
    for label in ("cold", "warm", "warm"):
        t0 = time.perf_counter()
        once()
        out(f"  unroll T={T}, batch {batch_size}, {label}: {time.perf_counter() - t0:.3f} s")
    out("  cProfile of a warm unroll:")
    out(profile_top(once))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="gpu", choices=backend.DEVICES)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sections", default="models,conv2",
                    help="comma-separated: models (1, 2, 4, 5 above), conv2 (3)")
    args = ap.parse_args()
    sections = args.sections.split(",")
    lines = []

    def out(text):
        print(text, flush=True)
        lines.append(text)
    if "conv2" in sections:
        section_conv2_ab(args.device, out)
    for name in ("convnet", "resnet-mini") if "models" in sections else ():
        model, problem, xp, w = section_model(name, args.device, out)
        if name == "convnet":
            section_unroll(problem, xp, out)
            step = _stepper(problem, get_learned("mlhf", model=model, untrained=True), w,
                            _batch(model, 128))
            step()

            def five_steps():
                for _ in range(5):
                    step()
                _sync(xp)
            out("\n  cProfile of five MLHF steps on convnet:")
            out(profile_top(five_steps))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
