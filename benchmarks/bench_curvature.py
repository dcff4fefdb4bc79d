"""Cost of a Gauss-Newton product relative to a gradient, on the ``convnet`` model.

convnet (conv 5×5×64 SAME, ReLU, max-pool 2/2, twice; fc 384, fc 192, fc 10)
on 3×32×32, batch 128, float32.  At one linearization, times (median of
repeats, same run):

* forward + backward: ``model.linearize(w, x)`` then ``lin.backward(∇_z l)``
* G v: ``curvature.gvp(lin, loss, v)`` = R-op (reusing the forward's cached
  im2col columns) + loss-Hessian product + backward, no new forward

and prints the ratio Gv / (forward + backward).  The R-op of a network has a
parameter direction in every layer and an input direction in every layer but
the first, so it costs about one forward; the target ratio is ≤ 1.3.

    python benchmarks/bench_curvature.py [--batch 128] [--repeats 7] [--device cpu|gpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hfmeta import backend, curvature
from hfmeta.losses import SoftmaxCrossEntropy
from hfmeta.models import build


def interleaved_medians(fns, repeats, sync):
    """Median seconds of each callable, timed in turn within every repeat so that
    load changes on a shared machine hit all of them alike."""
    for fn in fns.values():  # warm-up
        fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=backend.DEVICES)
    args = ap.parse_args(argv)

    xp = backend.xp_for(args.device)
    sync = (lambda: xp.cuda.Stream.null.synchronize()) if xp is not np else (lambda: None)
    model = build("convnet", (3, 32, 32), 10, dtype="float32", device=args.device)
    rng = np.random.default_rng(0)
    w = model.init(0)
    x = xp.asarray(rng.standard_normal((args.batch, 3, 32, 32)), dtype=np.float32)
    y = xp.asarray(rng.integers(0, 10, args.batch))
    v = xp.asarray(rng.standard_normal(model.num_params), dtype=np.float32)
    loss = SoftmaxCrossEntropy()
    lin = model.linearize(w, x)

    def forward_backward():
        lin_ = model.linearize(w, x)
        lin_.backward(loss.grad(lin_.output, y))

    t = interleaved_medians({
        "fb": forward_backward,
        "gv": lambda: curvature.gvp(lin, loss, v),
        "f": lambda: model.linearize(w, x),
        "rop": lambda: lin.rop(v),
    }, args.repeats, sync)
    t_fb, t_gv, t_f, t_rop = t["fb"], t["gv"], t["f"], t["rop"]
    print(f"convnet, {model.num_params} params, batch {args.batch}, float32, {args.device}")
    print(f"forward            {1e3 * t_f:8.1f} ms")
    print(f"forward + backward {1e3 * t_fb:8.1f} ms")
    print(f"R-op (J v)         {1e3 * t_rop:8.1f} ms")
    print(f"G v                {1e3 * t_gv:8.1f} ms")
    print(f"ratio Gv / (forward + backward) = {t_gv / t_fb:.2f}")
    return t_gv / t_fb


if __name__ == "__main__":
    main()
