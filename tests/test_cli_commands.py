"""CliRunner tests of the commands not covered elsewhere, on tiny configurations."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta.cli import cli

TINY_MODEL = ["--model", "mlp", "--model-opt", "hidden=[8]"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_info_lists_the_zoo():
    r = invoke("info", "--in-shape", "3,32,32")
    assert r.exit_code == 0, r.output
    assert "convnet" in r.output and "1,756,426" in r.output and "numpy" in r.output


def test_info_model_layout():
    r = invoke("info", "--model", "cnn-small", "--in-shape", "1,28,28")
    assert r.exit_code == 0 and "conv1.weight" in r.output and "total" in r.output


def test_gradcheck_command_on_a_subset():
    r = invoke("-q", "gradcheck", "-k", "maxpool")
    assert r.exit_code == 0, r.output
    assert "maxpool 2/2" in r.output and "0 failed" in r.output
    r = invoke("gradcheck", "-k", "no-such-layer")
    assert r.exit_code == 2


@pytest.mark.parametrize("args, message, where", [
    (["train", "--foo"], "No such option '--foo'", "hfmeta train"),
    (["--seed", "-1", "train"], "Invalid value for '--seed'", "hfmeta"),
    (["no-such-command"], "No such command 'no-such-command'", "hfmeta"),
    (["data", "prepare"], "Missing argument 'NAME'", "hfmeta data prepare"),
    (["train", "--resume", "x", "--epochs", "2"], "only --steps can", "hfmeta train"),
])
def test_usage_errors_are_one_line_pointing_to_help(args, message, where):
    """Click prints usage, a hint and a blank line before the message; hfmeta one line."""
    r = CliRunner().invoke(cli, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("hfmeta: error: "), r.output
    assert message in lines[0] and f"(see '{where} --help')" in lines[0], lines[0]


def test_no_arguments_still_show_the_help():
    for args in ([], ["data"]):
        r = CliRunner().invoke(cli, args)
        assert r.output.startswith("Usage: hfmeta") and "Commands:" in r.output, r.output


def test_bench_command_tiny(tmp_path):
    out = tmp_path / "b.json"
    r = invoke("-q", "bench", "--model", "cnn-small", "--in-shape", "1,8,8", "--batch-size", "8",
               "--items", "fwdbwd,gvp,sgd,mlhf", "--repeats", "1", "--json", str(out))
    assert r.exit_code == 0, r.output
    assert "fwdbwd" in r.output and "mlhf" in r.output
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"fwdbwd", "gvp", "sgd", "mlhf"}
    assert all(v["seconds"] > 0 for v in data["results"].values())
    r = invoke("bench", "--items", "nope")
    assert r.exit_code == 2


def test_compare_tunes_each_optimizer_over_its_grid(tmp_path):
    out = tmp_path / "cmp"
    r = invoke("-q", "compare", "sgd", "adam", *TINY_MODEL, "--steps", "4", "--batch-size", "16",
               "--hp", "sgd:momentum=0.9", "--hp", "adam:beta1=0.9", "--hp", "adam:beta2=0.999",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "compare.json").read_text())
    assert [row["optimizer"] for row in rows] == ["sgd", "adam"]
    assert all(row["grid_points"] == 3 for row in rows)          # lr ∈ {0.1, 0.01, 0.001}·16/128
    for row in rows:
        assert np.isclose(row["hparams"]["lr"] / (16 / 128), [0.1, 0.01, 0.001]).any()
        kept = [p for p in (out / row["optimizer"]).iterdir()]
        assert len(kept) == 1                                     # only the best run is kept
    assert "best hyper-parameters" in r.output


def test_compare_grid_batch_is_tables_baseline_batch(tmp_path):
    """--grid-batch sets Table 1's b_bl: lr ∈ {0.1, 0.01, 0.001} × b_tr / b_bl (the paper's
    ResNet runs, section 4.4, use b_bl = 256)."""
    out = tmp_path / "cmp"
    r = invoke("-q", "compare", "sgd", *TINY_MODEL, "--steps", "2", "--batch-size", "16",
               "--grid-batch", "256", "--hp", "sgd:momentum=0.9", "--keep-all",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    lrs = sorted(json.loads((p / "config.json").read_text())["hparams"]["lr"]
                 for p in (out / "sgd").iterdir())
    np.testing.assert_allclose(lrs, [0.001 / 16, 0.01 / 16, 0.1 / 16])


def test_meta_train_command_tiny(tmp_path):
    out = tmp_path / "m.h5"
    r = invoke("-q", "meta-train", "--method", "mlhf", "--model", "cnn-small", "--model-opt",
               "channels=2", "--batch-size", "8", "--iterations", "2", "--opt", "T=2",
               "--eval-every", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert out.exists() and [x.get("iteration") for x in lines[:4]] == [0, 1, 2, 2]
    assert lines[3]["validation"].keys() == {"l_p", "l_s", "residual", "loss_end"}
    assert set(lines[4]["evaluation"]) == {"before", "after"}
    # the evaluation before training is logged first (a stopped run keeps it), and the
    # validation at the last iteration and the final evaluation see the same theta
    assert lines[0]["validation"] == lines[4]["evaluation"]["before"]
    assert lines[3]["validation"] == lines[4]["evaluation"]["after"]
    assert "l_p" in r.output and "l_s" in r.output and "before -> after" in r.output
    # the meta-trained file drives training
    r = invoke("-q", "train", "--model", "cnn-small", "--model-opt", "channels=2", "-o", "mlhf",
               "--meta", str(out), "--steps", "3", "--batch-size", "16",
               "--out", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output


def test_meta_train_does_not_overwrite_without_force(tmp_path):
    """An existing --out is refused (its meta-parameters and log stay byte for byte) unless
    --resume continues from it or --force overwrites it."""
    out = tmp_path / "m.h5"
    args = ["-q", "meta-train", "--model", "cnn-small", "--model-opt", "channels=2", "-b", "8",
            "-n", "1", "--opt", "T=2", "--out", str(out)]
    assert invoke(*args).exit_code == 0
    before = out.read_bytes(), (tmp_path / "m.jsonl").read_bytes()
    r = invoke(*args)
    assert r.exit_code == 1 and "already exists; use --resume" in r.output
    assert (out.read_bytes(), (tmp_path / "m.jsonl").read_bytes()) == before
    assert invoke(*args, "-n", "2", "--force").exit_code == 0    # a fresh run of 2 iterations
    log = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in log if "iteration" in x] == [0, 1, 2]


@pytest.mark.parametrize("args", [["--iterations", "0"], ["--iterations", "-1"],
                                  ["--save-every", "0"], ["--eval-every", "-1"],
                                  ["--batch-size", "0"]])
def test_meta_train_refuses_bad_counts(tmp_path, args):
    """Click names the option (exit 2) before anything runs or is written; -n 0 and
    --save-every 0 used to end in a traceback after the held-out evaluation."""
    r = invoke("meta-train", "--model", "cnn-small", "--model-opt", "channels=2", "-b", "8",
               "--opt", "T=2", *args, "--out", str(tmp_path / "m.h5"))
    assert r.exit_code == 2 and args[0] in r.output and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["bench", "--repeats", "0"], ["bench", "--classes", "1"],
                                  ["bench", "--unroll-T", "0"], ["info", "--classes", "0"],
                                  ["--seed", "-1", "info"]])
def test_bad_counts_elsewhere_are_refused_by_click(args):
    r = invoke(*args)
    assert r.exit_code == 2 and "Invalid value" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("args", [
    ["bench", "--in-shape", "3,32"], ["bench", "--in-shape", "a,b,c"],
    ["info", "--model", "mlp", "--in-shape", "1,0,28"],
    ["bench", "--items", "sgd", "--json", "{missing}/b.json"],
    ["meta-train", "--out", "{missing}/m.h5"], ["plot", ".", "-o", "{missing}/p.png"]])
def test_bad_shapes_and_output_folders_are_refused_before_any_work(tmp_path, args):
    """An output file in a folder that does not exist is refused at once (meta-train used to
    fail only at its first write, after the held-out evaluation)."""
    r = invoke(*[a.format(missing=tmp_path / "missing") for a in args])
    assert r.exit_code == 2 and "Invalid value" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "missing").exists()


def test_meta_train_command_with_evolution_strategies(tmp_path):
    """``--opt objective=es``: whole runs in two forked workers; the log has the ES
    columns, the summary the ES score, the file the objective; bad options are one line."""
    out = tmp_path / "es.h5"
    r = invoke("meta-train", "-m", "mlhf", "--model", "cnn-small", "--model-opt", "channels=2",
               "-b", "8", "-n", "2", "--opt", "objective=es", "--opt", "train=s",
               "--opt", "es_pairs=2", "--opt", "es_steps=3", "--opt", "workers=2",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "es.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines[:3]] == [0, 1, 2] and "validation" in lines[0]
    assert {"es_fitness", "es_blowups", "es_spread", "loss_end"} <= set(lines[1])
    assert "es_fitness" in r.output
    from hfmeta.meta.mlhf import MLHFNets
    assert MLHFNets.load(str(out))[2]["objective"] == "es"
    r = invoke("meta-train", "-m", "mlhf", "--opt", "objective=es", "--opt", "es_params=lstm",
               "--out", str(tmp_path / "bad.h5"))
    assert r.exit_code != 0 and r.output.strip().count("\n") == 0
    assert "es_params" in r.output and "Traceback" not in r.output


def test_bench_compare_torch_without_torch_is_a_clean_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    r = CliRunner().invoke(cli, ["bench", "--model", "cnn-small", "--in-shape", "1,8,8",
                                 "--batch-size", "4", "--items", "fwdbwd", "--repeats", "1",
                                 "--compare-torch"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith("hfmeta: error: --compare-torch needs PyTorch")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit, not ours
@pytest.mark.parametrize("name, width", [("convnet", 1 / 16), ("resnet-mini", 1 / 8)])
def test_torch_mirror_gives_the_same_logits_and_gauss_newton_product(name, width):
    """Where PyTorch happens to be installed: same weights, same logits, same Gv
    (resnet-mini: batch norm with the batch's statistics, residual blocks)."""
    torch = pytest.importorskip("torch")
    from hfmeta.bench_torch import torch_function
    from hfmeta.models import build
    from hfmeta.problem import Problem
    model = build(name, (3, 8, 8), 4, dtype="float64", width=width)
    rng = np.random.default_rng(0)
    w = model.init(0)
    x = rng.standard_normal((3, 3, 8, 8))
    f = torch_function(model, torch)
    params = {k: torch.as_tensor(v) for k, v in model.layout.views(w).items()}
    z = f(params, torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(z, model.forward(w, x, True), rtol=1e-12, atol=1e-12)
    v = rng.standard_normal(model.num_params)
    tv = {k: torch.as_tensor(a) for k, a in model.layout.views(v).items()}
    logits = lambda ps: f(ps, torch.as_tensor(x))  # noqa: E731
    zt, jv = torch.func.jvp(logits, (params,), (tv,))
    p = torch.softmax(zt, dim=1)
    hjv = (p * jv - p * (p * jv).sum(dim=1, keepdim=True)) / zt.shape[0]
    gv_torch = torch.func.vjp(logits, params)[1](hjv)[0]
    gv_torch = model.layout.flatten({k: t.numpy() for k, t in gv_torch.items()})
    problem = Problem(model)
    np.testing.assert_allclose(problem.gvp(model.linearize(w, x), v), gv_torch, rtol=1e-10,
                               atol=1e-14)


COMPARE_TINY = ["--model", "mlp", "--model-opt", "hidden=[8]", "--batch-size", "16"]


@pytest.mark.parametrize("when", ["last step", "between points"])
def test_ctrl_c_in_compare_stops_it_wherever_it_lands(tmp_path, monkeypatch, when):
    """In a grid point's last step the run finished and compare went on to the next point
    (exit 0); between points Click printed 'Aborted!' and exited 1."""
    import signal

    from hfmeta.train import Run
    original = Run.evaluate if when == "last step" else Run.create.__func__

    def evaluate(self):
        os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    def create(cls, cfg, run_dir):
        os.kill(os.getpid(), signal.SIGINT)
        return original(cls, cfg, run_dir)
    if when == "last step":
        monkeypatch.setattr(Run, "evaluate", evaluate)
    else:
        monkeypatch.setattr(Run, "create", classmethod(create))
    r = invoke("compare", "sgd", *COMPARE_TINY, "--steps", "1", "--out", str(tmp_path / "c"))
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 130, r.output
    stopped_in = "[1/9]" if when == "last step" else "[2/9]"
    assert lines[-1].startswith(f"hfmeta: error: interrupted in sgd {stopped_in}"), r.output
    assert not (tmp_path / "c" / "compare.json").exists()


def test_compare_rerun_replaces_its_table_and_optimizer_folders(tmp_path):
    """Old grid points stayed beside new ones (plot c/sgd/* mixed two comparisons), and
    a diverged optimizer's row was 'inf inf 0.00% nan' in a compare.json with Infinity."""
    out = tmp_path / "c"
    assert invoke("-q", "compare", "sgd", *COMPARE_TINY, "--steps", "2", "--keep-all",
                  "--out", str(out)).exit_code == 0
    assert len(os.listdir(out / "sgd")) == 9
    r = invoke("compare", "sgd", *COMPARE_TINY, "--steps", "40", "--hp", "sgd:lr=1e6",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    assert os.listdir(out / "sgd") == ["000"]
    assert "diverged" in r.output and "every grid point diverged" in r.output
    row = json.loads((out / "compare.json").read_text(), parse_constant=pytest.fail)[0]
    assert row["diverged"] is True and row["train_loss"] is None and row["test_acc"] is None


def test_plot_writes_the_format_its_extension_names(tmp_path):
    """It wrote PNG bytes into p.pdf, p.svg and p.xyz alike."""
    pytest.importorskip("matplotlib")
    run = tmp_path / "r"
    assert invoke("-q", "train", *COMPARE_TINY, "--steps", "2", "-o", "sgd",
                  "--out", str(run)).exit_code == 0
    assert invoke("plot", str(run), "-o", str(tmp_path / "p.pdf")).exit_code == 0
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")
    r = invoke("plot", str(run), "-o", str(tmp_path / "p.xyz"))
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith(
        f"hfmeta: error: -o {tmp_path / 'p.xyz'}: name a figure file ending in"), r.output
    assert not (tmp_path / "p.xyz").exists()


def test_info_on_a_gpu_that_is_not_there_is_an_error():
    """It printed 'cupy: not available' and then 'device: gpu', exit 0."""
    from hfmeta.backend import cupy_available
    if cupy_available():
        pytest.skip("CuPy and a GPU are here")
    r = invoke("--device", "gpu", "info")
    assert r.exit_code != 0 and "hfmeta: error: --device gpu needs CuPy" in r.output
