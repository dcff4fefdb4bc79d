"""End to end on the GPU: every optimizer, an MLHF meta-gradient, L2L and SLSTM
meta-training, and ``hfmeta --device gpu train`` give the CPU's numbers.

Each test runs twice (the ``gpu`` fixture of ``conftest.py``): on a real GPU
(``cuda``, marked ``gpu``: skipped without CuPy and a device) and, in every
default run, on the strict stand-in of
:mod:`strict_device` (``strict-device``), NumPy arrays that refuse host/device mixing
as CuPy does -- so a NumPy table combined with device data, an ``np.``
function applied to it or an implicit host conversion fails here, on a CPU,
before it can fail on a GPU.

All of hfmeta runs one code path on NumPy and CuPy (:mod:`hfmeta.backend`), so
the same seeded run on both devices must agree to float64 rounding: weights
are drawn on the host and moved (:func:`hfmeta.backend.to_device`), batches
are moved, and nothing depends on the device but the arithmetic's order
(BLAS/cuBLAS reductions), hence a relative tolerance of 1e-8 after a few
steps, not equality.  The per-family GPU tests beside each layer check the
pieces; these check that they are wired together on the device: the
optimizers' state, PCG, the LSTM banks, meta-training's Adam and replay, the
data pipeline and checkpoints of a CLI run.
"""
import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta import backend, models
from hfmeta.cli import cli
from hfmeta.gradcheck import rel_error
from hfmeta.layers import Conv2d
from hfmeta.meta.mlhf import MLHFNets
from hfmeta.meta.mlhf_train import unroll
from hfmeta.meta.registry import get_learned
from hfmeta.optim import OPTIMIZERS, get_optimizer
from hfmeta.problem import Problem

from test_mlhf import tiny_bn_convnet

TOL = 1e-8
LEARNED = ("mlhf", "l2l", "slstm")
# cheap settings so that every optimizer takes a few real steps in seconds.  The CG
# budgets also keep CG short of stagnation: with 15 iterations Martens' CG on
# these 16-example batches amplifies a 1e-15 change of the weights to 1e-3 in
# the weights three steps on (test_the_compared_runs_are_stable_to_rounding).
FAST = {"martens-hf": {"cg_max_iters": 7}, "kfac": {"inverse_every": 2},
        "hf-fixed": {"cg_iters": 8}, "hf-lm": {"cg_iters": 8}}


def _batches(model, steps, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n,) + model.in_shape), rng.integers(0, model.classes, n))
            for _ in range(steps)]


def _run_steps(name, device, steps=3, model_name="cnn-small", in_shape=(1, 12, 12),
               hparams=None, perturb=0.0, fft=False, **model_options):
    """``steps`` steps of optimizer ``name`` on a zoo model (float64) on ``device``:
    the final weights and the per-step losses, on the host.  ``perturb``: relative
    size of a seeded perturbation of the initial weights (a stand-in for the
    devices' different rounding).  ``fft``: every convolution in the Fourier
    domain (on the GPU "auto" never picks it)."""
    model = models.build(model_name, in_shape, 4, dtype="float64", device=device,
                         **model_options)
    if fft:
        for _, layer in model.net.leaves():
            if isinstance(layer, Conv2d):
                layer.set_algorithm("fft", device)
    problem = Problem(model)
    hparams = {**FAST.get(name, {}), **(hparams or {})}
    if name in LEARNED:
        opt = get_learned(name, model=model, untrained=True, **hparams)
    else:
        opt = get_optimizer(name, **hparams)
    w = model.init(seed=0)
    if perturb:
        xi = np.random.default_rng(1).standard_normal(w.shape)
        w = w * (1 + perturb * backend.to_device(xi, device))
    state = opt.init(w)
    losses = []
    for x, y in _batches(model, steps):
        batch = (backend.to_device(x, device), backend.to_device(y, device))
        w, state, info = opt.step(problem, w, state, batch)
        losses.append(info["loss"])
    assert backend.device_of(w) == device
    return backend.asnumpy(w), np.array(losses)


# every optimizer, 3 steps of cnn-small
OPTIMIZER_NAMES = sorted(OPTIMIZERS) + list(LEARNED)
# options with their own device work, 4 steps: every diagonal estimator of SOU (the
# random ones draw on the host), SLSTM meta-learning jointly while it trains,
# curvature sub-batches sliced from the gradient batch's caches
VARIANTS = [("sou", {"diagonal": d}) for d in
            ("exact-ggn", "mc-ggn", "hutchinson", "hutchinson-hessian")] + [
    ("slstm", {"joint": True, "T": 2}), ("hf-fixed", {"curvature_batch": 8}),
    ("martens-hf", {"curvature_batch": 8}), ("mlhf", {"curvature_batch": 8})]
# zoo models, 2 steps: convnet with "auto" convolutions (the FFT for conv2 on the CPU
# only) and with every convolution in the Fourier domain; resnet-mini has batch norm
# and residual blocks; MLHF with a half-size curvature batch slices caches
ZOO_MODELS = [("convnet", (3, 16, 16), False), ("convnet", (3, 16, 16), True),
              ("resnet-mini", (3, 8, 8), False)]
ZOO_IDS = ["convnet", "convnet-fft", "resnet-mini-bn"]
ZOO_OPTIMIZERS = ["mlhf", "kfac", "sgd"]


def _zoo_hparams(name):
    return {"curvature_batch": 8} if name == "mlhf" else None


COMPARED_RUNS = (
    [pytest.param(n, 3, {}, id=n) for n in OPTIMIZER_NAMES]
    + [pytest.param(n, 4, {"hparams": h}, id=f"{n}-{next(iter(h.values()))}")
       for n, h in VARIANTS]
    + [pytest.param(n, 2, {"model_name": m, "in_shape": s, "hparams": _zoo_hparams(n),
                           "fft": fft, "width": 0.25}, id=f"{n}-{i}")
       for (m, s, fft), i in zip(ZOO_MODELS, ZOO_IDS) for n in ZOO_OPTIMIZERS])


@pytest.mark.parametrize("name, steps, options", COMPARED_RUNS)
def test_the_compared_runs_take_the_cpu_steps_on_the_gpu(gpu, name, steps, options):
    """Each run of :data:`COMPARED_RUNS` gives the CPU's losses and weights on the GPU."""
    runs = [_run_steps(name, device, steps, **options) for device in ("cpu", "gpu")]
    (w_cpu, losses_cpu), (w_gpu, losses_gpu) = runs
    assert rel_error(losses_gpu, losses_cpu) < TOL
    assert rel_error(w_gpu, w_cpu) < TOL


@pytest.mark.parametrize("name, steps, options", COMPARED_RUNS)
def test_the_compared_runs_are_stable_to_rounding(name, steps, options):
    """The premise of TOL, checked on the CPU in every run: a run compared above
    moves by less than TOL / 100 when its initial weights move by one part in
    1e15, so a GPU run beyond TOL is a device bug, not rounding amplified by an
    ill-conditioned run (a CG run into stagnation is one: see FAST)."""
    w_0, losses_0 = _run_steps(name, "cpu", steps, **options)
    w_1, losses_1 = _run_steps(name, "cpu", steps, perturb=1e-15, **options)
    assert rel_error(losses_1, losses_0) < TOL / 100
    assert rel_error(w_1, w_0) < TOL / 100


def _mlhf_unroll(device, T=3):
    model = tiny_bn_convnet(device)
    xp = model.xp
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batches = [(xp.asarray(rng.standard_normal((4, 1, 4, 4))), xp.asarray(rng.integers(0, 3, 4)))
               for _ in range(T + 1)]
    nets = MLHFNets(n=4)
    theta = xp.asarray(backend.asnumpy(nets.init(0)) + 0.3 * rng.standard_normal(nets.size))
    rows = nets.rows(model.layout)
    states = nets.zero_states(rows, xp, np.float64)
    d_prev = xp.asarray(0.01 * rng.standard_normal(model.num_params))
    r_prev = xp.asarray(0.01 * rng.standard_normal(model.num_params))
    res = unroll(nets, theta, problem, model.init(0), copy.deepcopy(states), d_prev, r_prev,
                 batches, rows, clip=0.05, noise=[1.01, 0.985, 1.0][:T])
    return res.l_s, res.l_p, backend.asnumpy(res.grad), backend.asnumpy(res.w)


def test_mlhf_meta_gradient_on_the_gpu_equals_the_cpu_one(gpu):
    """The full MLHF meta-gradient (PCG backward, both LSTM BPTTs, the step clip)."""
    (ls_c, lp_c, g_c, w_c), (ls_g, lp_g, g_g, w_g) = _mlhf_unroll("cpu"), _mlhf_unroll("gpu")
    assert abs(ls_g - ls_c) <= TOL * abs(ls_c) and abs(lp_g - lp_c) <= TOL * abs(lp_c)
    assert rel_error(g_g, g_c) < TOL
    assert rel_error(w_g, w_c) < TOL


@pytest.mark.parametrize("method", ["mlhf", "l2l", "slstm"])
def test_meta_train_on_the_gpu_writes_the_cpu_meta_parameters(gpu, tmp_path, method):
    """Two meta-iterations through the CLI (Adam, replay, checkpoint) on each device."""
    thetas = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"{method}-{device}.h5"
        r = CliRunner().invoke(cli, ["-q", "--device", device, "--dtype", "float64",
                                     "meta-train", "-m", method, "-n", "2", "-b", "16",
                                     "--opt", "T=2", "--out", str(out)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        from hfmeta.meta.common import load_meta
        _, banks, _ = load_meta(str(out), method, np, np.float64)
        thetas[device] = np.concatenate([np.asarray(theta) for _, theta in banks.values()])
    assert rel_error(thetas["gpu"], thetas["cpu"]) < TOL


def _cli_train_records(tmp_path, *train_args):
    """``{device: metrics.jsonl records}`` of ``hfmeta -q --device DEVICE --dtype float64
    train TRAIN_ARGS`` on the CPU and on the GPU."""
    records = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / device
        r = CliRunner().invoke(cli, ["-q", "--device", device, "--dtype", "float64", "train",
                                     *train_args, "--out", str(out)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        records[device] = [json.loads(x) for x in open(out / "metrics.jsonl")]
    return records


def test_cli_train_on_the_gpu_matches_the_cpu_run(gpu, tmp_path):
    """``hfmeta --device gpu train`` (the main job, shipped MLHF): same losses as the CPU run."""
    losses = {device: np.array([x["loss"] for x in lines if x["kind"] == "step"])
              for device, lines in _cli_train_records(tmp_path, "--steps", "4").items()}
    assert losses["cpu"].size == 4
    assert rel_error(losses["gpu"], losses["cpu"]) < TOL


def test_precise_bn_evaluation_on_the_gpu_matches_the_cpu_one(gpu, tmp_path):
    """``--precise-bn``'s statistics at the current weights (batch-norm net): the same test
    figures, both kinds, on the device as on the CPU."""
    records = _cli_train_records(tmp_path, "--model", "resnet-mini", "--model-opt", "width=0.25",
                                 "-b", "16", "--steps", "2", "-o", "adam", "--precise-bn", "2")
    evals = {device: np.array([lines[-1][k] for k in ("test_loss", "running_test_loss")])
             for device, lines in records.items()}
    assert rel_error(evals["gpu"], evals["cpu"]) < TOL


def test_float32_meta_training_stays_float32_on_the_gpu(gpu):
    """MLHF meta-training's target net keeps the model's dtype on the device (a
    NumPy float64 step-noise factor once promoted it to float64)."""
    from hfmeta.meta.mlhf_train import MetaTrainer
    model = models.build("cnn-small", (1, 12, 12), 4, dtype="float32", device="gpu")
    class Stream:                       # what MetaTrainer reads: batch_size and next()
        batch_size = 16
        pending = iter(_batches(model, 7))

        def __next__(self):
            x, y = next(self.pending)
            return backend.to_device(x.astype(np.float32), "gpu"), backend.to_device(y, "gpu")

    trainer = MetaTrainer(Problem(model), Stream(), T=2, seed=0)
    for _ in range(2):
        trainer.meta_step()
        assert backend.device_of(trainer.w) == "gpu"
        assert trainer.w.dtype == np.float32 and trainer.theta.dtype == np.float32


def test_bench_runs_on_the_gpu(gpu, tmp_path):
    """``hfmeta --device gpu bench``: every timed item (device synchronised around
    each call) and the meta-training unroll's peak memory from the memory pool."""
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["-q", "--device", "gpu", "bench", "--model", "convnet",
                                 "--model-opt", "width=0.25", "--in-shape", "3,16,16",
                                 "--batch-size", "8", "--items", "fwdbwd,gvp,pcg,sgd,mlhf,unroll",
                                 "--unroll-T", "2", "--unroll-batch", "4", "--repeats", "1",
                                 "--json", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"fwdbwd", "gvp", "pcg", "sgd", "mlhf", "unroll"}
    assert all(v["seconds"] > 0 for v in results.values())
    assert results["unroll"]["T"] == 2 and results["unroll"]["peak_bytes"] >= 0
