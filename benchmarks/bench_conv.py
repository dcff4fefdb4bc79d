"""Micro-benchmark of Conv2d: the two convolutions of the ``convnet`` model.

conv1: 5×5×64 SAME on 3×32×32, conv2: 5×5×64 SAME on 64×16×16, batch 128,
float32.  Prints the median wall time (ms) of forward, R-op and backward.
The R-op and backward are timed in the two ways a network uses them: the
first layer has no input direction / needs no input gradient, inner layers do.
If PyTorch happens to be installed, ``torch.nn.functional.conv2d`` forward +
backward (input and weight gradients) is timed on the same shapes for scale;
hfmeta itself never imports torch.

    python benchmarks/bench_conv.py [--batch 128] [--repeats 7] [--device cpu|gpu] [--clock wall|cpu]

``--clock cpu`` reports process CPU time instead of wall time: on a shared,
oversubscribed machine run it with ``OPENBLAS_NUM_THREADS=1`` for a stable
single-core cost that other jobs do not distort.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hfmeta import backend
from hfmeta.layers import Conv2d

SHAPES = {"conv1 3x32x32 -> 64": (3, 32, 32), "conv2 64x16x16 -> 64": (64, 16, 16)}


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def median_ms(fn, repeats, sync):
    fn()  # warm-up (allocator, BLAS threads)
    sync()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        sync()
        times.append(clock() - t0)
    return 1e3 * float(np.median(times))


def bench_hfmeta(in_shape, batch, repeats, xp, sync):
    rng = np.random.default_rng(0)
    layer = Conv2d(64, 5, padding="same")
    layer.build(in_shape)
    f32 = np.float32
    p = {k: xp.asarray(v, dtype=f32) for k, v in layer.init_params(rng).items()}
    dp = {k: xp.asarray(rng.standard_normal(v.shape), dtype=f32) for k, v in p.items()}
    x = xp.asarray(rng.standard_normal((batch,) + in_shape), dtype=f32)
    dx = xp.asarray(rng.standard_normal(x.shape), dtype=f32)
    y, cache = layer.forward(p, x, True)
    dy = xp.asarray(rng.standard_normal(y.shape), dtype=f32)
    g = {k: xp.empty_like(v) for k, v in p.items()}
    return {
        "forward": median_ms(lambda: layer.forward(p, x, True), repeats, sync),
        "rop(dp)": median_ms(lambda: layer.rop(p, cache, dp, None), repeats, sync),
        "rop(dp,dx)": median_ms(lambda: layer.rop(p, cache, dp, dx), repeats, sync),
        "bwd(dW)": median_ms(lambda: layer.backward(p, cache, dy, g, False), repeats, sync),
        "bwd(dW,dx)": median_ms(lambda: layer.backward(p, cache, dy, g, True), repeats, sync),
    }


def bench_torch(in_shape, batch, repeats, device):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    dev = "cuda" if device == "gpu" else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    x = torch.randn((batch,) + in_shape, device=dev, requires_grad=True)
    w = torch.randn(64, in_shape[0], 5, 5, device=dev, requires_grad=True)
    b = torch.zeros(64, device=dev, requires_grad=True)

    def fwd_bwd():
        y = F.conv2d(x, w, b, padding=2)
        y.backward(torch.ones_like(y))

    return median_ms(fwd_bwd, repeats, sync)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", choices=backend.DEVICES, default="cpu")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    xp = backend.xp_for(args.device)
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else (lambda: None)
    print(f"Conv2d 5x5x64 SAME, batch {args.batch}, float32, device {args.device}, "
          f"{args.clock} clock, median of {args.repeats} (ms)")
    cols = ["forward", "rop(dp)", "rop(dp,dx)", "bwd(dW)", "bwd(dW,dx)"]
    print(f"{'layer':24s}" + "".join(f"{c:>12s}" for c in cols) + f"{'fwd+bwd':>10s}{'torch':>9s}{'ratio':>7s}")
    for name, in_shape in SHAPES.items():
        t = bench_hfmeta(in_shape, args.batch, args.repeats, xp, sync)
        ours = t["forward"] + t["bwd(dW,dx)"]
        ref = bench_torch(in_shape, args.batch, args.repeats, args.device)
        tail = f"{ref:9.1f}{ours / ref:7.2f}" if ref else f"{'-':>9s}{'-':>7s}"
        print(f"{name:24s}" + "".join(f"{t[c]:12.1f}" for c in cols) + f"{ours:10.1f}" + tail)


if __name__ == "__main__":
    main()
