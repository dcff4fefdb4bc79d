"""Training runs from the command line: summary, run folder, resume after SIGKILL, errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta.cli import cli
from hfmeta.datasets.hdf5 import DatasetWriter
from hfmeta.meta.registry import shipped_path
from hfmeta.storage import load_checkpoint

TINY = ["--model", "mlp", "--model-opt", "hidden=[16]", "--batch-size", "32", "-o", "adam"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("hfmeta: error: "), result.output
    for frag in fragments:
        assert frag in lines[-1], lines[-1]
    assert "Traceback" not in result.output


def test_train_prints_summary_and_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    r = invoke("-q", "train", *TINY, "--steps", "12", "--eval-every", "5", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output and "12 steps" in r.output
    assert {"config.json", "metrics.jsonl", "checkpoint.h5", "summary.json"} <= set(os.listdir(out))
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    steps = [x for x in lines if x["kind"] == "step"]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [x["step"] for x in steps] == list(range(1, 13))
    assert [x["step"] for x in evals] == [5, 10, 12]
    assert all(x["samples"] == 32 * x["step"] for x in lines)
    assert all(np.isfinite(x["loss"]) for x in steps)
    summary = json.load(open(out / "summary.json"))
    assert summary["steps"] == 12 and 0 <= summary["test_acc"] <= 1
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck["step"] == 12 and ck["weights"]["w"].shape == (summary["params"],)


def test_default_is_the_shipped_mlhf_on_mnist5k(tmp_path):
    """`hfmeta train` with no options: cnn-small, mnist5k, the shipped meta-trained MLHF."""
    out = tmp_path / "run"
    r = invoke("-q", "train", "--steps", "6", "--out", str(out))
    assert r.exit_code == 0, r.output
    cfg = json.load(open(out / "config.json"))
    assert (cfg["model"], cfg["data"], cfg["optimizer"], cfg["meta"]) == \
        ("cnn-small", "mnist5k", "mlhf", None)
    steps = [json.loads(x) for x in open(out / "metrics.jsonl") if '"step"' in x]
    steps = [x for x in steps if x["kind"] == "step"]
    assert all(x["lr"] == 1.0 for x in steps)                 # b_tr / b_mt = 128 / 128
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert "with mlhf" in r.output and "test accuracy" in r.output


def test_shipped_mlhf_files_are_the_ones_their_readme_describes():
    """The default ``mlhf.h5`` is the ES-meta-trained file, ``mlhf_paper.h5`` the
    paper-objective one (``hfmeta/meta/shipped/README.md``); both at b_mt = 128."""
    from hfmeta.meta.mlhf import MLHFNets
    from hfmeta.meta.registry import shipped_path
    default = MLHFNets.load(shipped_path("mlhf"))[2]
    paper = MLHFNets.load(shipped_path("mlhf_paper"))[2]
    assert (default["objective"], default["train"], default["b_mt"]) == ("es", "s", 128)
    assert paper.get("objective", "paper") == "paper" and paper["b_mt"] == 128
    assert "objective=es" in default["command"] and "objective" not in paper["command"]


def test_training_lowers_the_loss(tmp_path):
    r = invoke("-q", "train", *TINY, "--steps", "60", "--eval-every", "20",
               "--hp", "lr=0.003", "--out", str(tmp_path / "r"))
    assert r.exit_code == 0, r.output
    evals = [json.loads(x) for x in open(tmp_path / "r" / "metrics.jsonl")
             if json.loads(x)["kind"] == "eval"]
    assert evals[-1]["train_loss"] < 0.6 * evals[0]["train_loss"]
    assert evals[-1]["test_acc"] > 0.7


def _hfmeta(*args):
    return [sys.executable, "-c", "from hfmeta.cli import main; main()", *args]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    """A run killed with SIGKILL and resumed ends with the same weights as one never stopped."""
    args = ["-q", "train", *TINY, "--steps", "600", "--checkpoint-every", "7", "--eval-every", "50"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_hfmeta(*args, "--out", str(killed)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        ck = killed / "checkpoint.h5"
        if ck.exists() and load_checkpoint(ck)["step"] >= 21:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(killed / "checkpoint.h5")["step"]
    assert 21 <= stopped_at < 600

    r = invoke("-q", "train", "--resume", str(killed))
    assert r.exit_code == 0, r.output
    r = invoke(*args, "--out", str(clean))
    assert r.exit_code == 0, r.output
    w_killed = load_checkpoint(killed / "checkpoint.h5")["weights"]["w"]
    w_clean = load_checkpoint(clean / "checkpoint.h5")["weights"]["w"]
    np.testing.assert_array_equal(w_killed, w_clean)
    steps = [json.loads(x)["step"] for x in open(killed / "metrics.jsonl")
             if json.loads(x)["kind"] == "step"]
    assert steps == list(range(1, 601))          # no duplicated or missing lines
    # the evaluations too, training loss included: the window of batch losses since the
    # last evaluation is checkpointed (it used to restart empty at the resume)
    assert _evals(killed) == _evals(clean) and len(_evals(clean)) == 12


def _evals(run_dir):
    return [{k: v for k, v in record.items() if k != "wall"}
            for record in map(json.loads, open(run_dir / "metrics.jsonl"))
            if record["kind"] == "eval"]


def _tiny_config(**options):
    from hfmeta.train import RunConfig
    return RunConfig(model="mlp", model_options={"hidden": [16]}, optimizer="adam",
                     batch_size=32, **options)


def test_ctrl_c_on_the_last_step_finishes_the_run(tmp_path):
    """It used to save, skip summary.json and advise --resume, which then refused
    ('already taken its 4 steps')."""
    from hfmeta.train import Run
    run = Run.create(_tiny_config(steps=4), str(tmp_path / "r"))
    summary = run.train(on_step=lambda step, info: step == 4 and os.kill(os.getpid(),
                                                                          signal.SIGINT))
    assert summary["steps"] == 4 and (tmp_path / "r" / "summary.json").exists()


def test_a_run_killed_before_its_summary_resumes_to_write_it(tmp_path):
    from hfmeta.train import Run
    run_dir = tmp_path / "r"
    done = Run.create(_tiny_config(steps=6, eval_every=3), str(run_dir)).train()
    (run_dir / "summary.json").unlink()                 # as if killed after the last save
    r = invoke("-q", "train", "--resume", str(run_dir))
    assert r.exit_code == 0, r.output
    assert json.loads((run_dir / "summary.json").read_text()) == done
    assert len(_evals(run_dir)) == 2                     # nothing evaluated again
    one_line_error(invoke("-q", "train", "--resume", str(run_dir)), 1, "already taken its 6 steps")


def test_sigint_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_hfmeta("train", *TINY, "--steps", "100000", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.05)
    while time.time() < deadline and (out / "metrics.jsonl").stat().st_size < 2000:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("hfmeta: error: interrupted at step")
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.h5")["step"] > 0


def test_sigint_stops_meta_training_after_a_whole_meta_iteration_and_saves(tmp_path):
    """Ctrl-C in `meta-train`: the meta-iteration under way ends, the meta-parameters of the
    last logged iteration are saved, exit 130 with one line; --resume goes on from there."""
    from hfmeta.meta.mlhf import MLHFNets

    out = tmp_path / "m.h5"
    args = ["meta-train", "--model", "cnn-small", "--model-opt", "channels=2", "-b", "8",
            "--opt", "T=2", "--save-every", "1000", "--out", str(out)]
    proc = subprocess.Popen(_hfmeta(*args, "-n", "100000"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = tmp_path / "m.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("hfmeta: error: interrupted after "
                                                   "meta-iteration")
    last = max(json.loads(x)["iteration"] for x in log.read_text().splitlines())
    assert last >= 5 and f"meta-iteration {last};" in err
    assert MLHFNets.load(str(out))[3]["iteration"] == last     # saved at the last iteration
    r = invoke("-q", *args, "-n", "1", "--resume")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["iteration"] for x in lines[-3:-1]] == [last, last + 1]   # validation, step


def test_sigint_in_compare_names_the_grid_point_not_a_train_resume(tmp_path):
    """Ctrl-C in `compare` stops the comparison with one line saying where; it used to pass
    on the grid point's `hfmeta train --resume ...` advice, which does not continue it."""
    out = tmp_path / "cmp"
    proc = subprocess.Popen(_hfmeta("compare", "adam", *TINY[:4], "--no-grid", "--steps",
                                    "100000", "--out", str(out)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "adam" / "000" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or metrics.stat().st_size < 2000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("hfmeta: error: interrupted in adam [1/1]") and "resume" not in last


def test_unknown_model_optimizer_dataset(tmp_path):
    one_line_error(invoke("train", "--model", "nope", "--out", str(tmp_path / "a")), 1,
                   "unknown model 'nope'")
    one_line_error(invoke("train", "--optimizer", "nope", "--out", str(tmp_path / "b")), 1,
                   "unknown optimizer 'nope'")
    one_line_error(invoke("train", "--data", "nope", "--out", str(tmp_path / "c")), 1, "nope")
    one_line_error(invoke("train", "--hp", "bogus=1", "--out", str(tmp_path / "d")), 1, "bogus")
    assert not any((tmp_path / d).exists() for d in "abcd")   # nothing written on bad input


def test_missing_and_corrupt_data_file(tmp_path):
    one_line_error(invoke("train", "--data", str(tmp_path / "none.h5")), 1, "does not exist")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    one_line_error(invoke("train", "--data", str(bad)), 1, "bad.h5")


def test_shipped_mlhf_on_a_net_with_batch_norm_names_the_way_out(tmp_path):
    """The shipped MLHF was meta-trained on cnn-small: no batch-norm kinds."""
    result = invoke("-q", "train", "--model", "resnet-mini", "--model-opt", "width=0.25",
                    "--steps", "1", "--out", str(tmp_path / "run"))
    one_line_error(result, 1, "bn.gamma, bn.beta", "--meta", "--hp untrained=true")
    assert not (tmp_path / "run").exists()
    result = invoke("-q", "train", "--model", "resnet-mini", "--model-opt", "width=0.25",
                    "--steps", "1", "--hp", "untrained=true", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output


def test_model_data_shape_mismatch(tmp_path):
    path = tmp_path / "tiny.h5"
    rng = np.random.default_rng(0)
    with DatasetWriter(str(path), "tiny", [str(i) for i in range(3)], (1, 3, 3), {"source": "test"}) as w:
        w.append("train", rng.integers(0, 255, (40, 1, 3, 3), dtype=np.uint8), rng.integers(0, 3, 40))
        w.append("test", rng.integers(0, 255, (10, 1, 3, 3), dtype=np.uint8), rng.integers(0, 3, 10))
    one_line_error(invoke("train", "--model", "cnn-big", "--data", str(path),
                          "--out", str(tmp_path / "r")), 1, "does not fit")


def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = invoke("train", *TINY, "--optimizer", "sgd", "--hp", "lr=1e30", "--steps", "50",
               "--checkpoint-every", "1", "--out", str(out))
    one_line_error(r, 3, "non-finite loss", "last good checkpoint")
    ck = load_checkpoint(out / "checkpoint.h5")
    assert np.isfinite(ck["weights"]["w"]).all()


def test_gpu_without_cupy_is_a_clean_error(tmp_path, monkeypatch):
    from hfmeta import backend
    monkeypatch.setattr(backend, "cupy_available", lambda: False)
    one_line_error(invoke("--device", "gpu", "train", "--out", str(tmp_path / "g")), 1, "CuPy")


def test_resume_of_a_non_run_folder(tmp_path):
    one_line_error(invoke("train", "--resume", str(tmp_path)), 1, "not a run folder")


@pytest.mark.parametrize("steps", [[], ["--steps", "2"], ["--steps", "3"]])
def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path, steps):
    """A run at step 3 of 3 (or asked for fewer steps) used to log one more evaluation with a
    NaN train loss and overwrite summary.json with it."""
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "3", "--out", str(out)).exit_code == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    one_line_error(invoke("train", "--resume", str(out), *steps), 1,
                   "has already taken 3 steps, more than --steps 2" if steps[1:] == ["2"]
                   else "has already taken its 3 steps", "--steps above 3")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    r = invoke("-q", "train", "--resume", str(out), "--steps", "4")
    assert r.exit_code == 0 and "4 steps" in r.output and "nan" not in r.output


def test_a_metrics_line_cut_short_by_a_kill_does_not_block_resume_or_plot(tmp_path):
    """A run killed while writing metrics.jsonl leaves half a line: resume drops it (it comes
    after the checkpoint anyway) and plot reads the rest; a broken line inside the file is
    one error naming file and line."""
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "4", "--out", str(out)).exit_code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines) + '{"kind": "step", "st')
    r = invoke("-q", "train", "--resume", str(out), "--steps", "5")
    assert r.exit_code == 0, r.output
    steps = [json.loads(x)["step"] for x in open(out / "metrics.jsonl")
             if json.loads(x)["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5]
    (out / "metrics.jsonl").write_text("".join(lines[:2]) + "[1, 2]\n" + "".join(lines[2:]))
    one_line_error(invoke("train", "--resume", str(out), "--steps", "9"), 1,
                   "metrics.jsonl, line 3: not a metrics record")


@pytest.mark.parametrize("line", ['{"kind": "step", "step": 1}',
                                  '{"kind": "eval", "step": 1, "samples": 32, "wall": 0.1, '
                                  '"train_loss": 1.0, "test_loss": "x", "test_acc": 0.5}',
                                  '{"kind": "other", "step": 1}'])
def test_plot_of_a_record_without_its_numbers_is_one_line(tmp_path, line):
    """plot read s["loss"] unchecked: a step record without it was a KeyError traceback."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    (out / "metrics.jsonl").write_text(line + "\n" + (out / "metrics.jsonl").read_text())
    one_line_error(invoke("plot", str(out), "-o", str(tmp_path / "p.png")), 1,
                   "metrics.jsonl, line 1: not a metrics record")


@pytest.mark.parametrize("damage", ["config-list", "config-null-hparams", "config-cut",
                                    "meta-file-as-checkpoint"])
def test_a_damaged_run_folder_is_one_line_and_is_left_alone(tmp_path, damage):
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    if damage == "config-list":
        (out / "config.json").write_text("[1, 2]")
    elif damage == "config-null-hparams":
        (out / "config.json").write_text(json.dumps({**config, "hparams": None}))
    elif damage == "config-cut":
        (out / "config.json").write_text(json.dumps(config)[:40])
    else:
        shutil.copy(shipped_path("mlhf"), out / "checkpoint.h5")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    for args in (["train", "--resume", str(out), "--steps", "3"], ["evaluate", str(out)]):
        one_line_error(invoke(*args), 1, "run")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_existing_run_folder_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    before = (out / "checkpoint.h5").read_bytes()
    one_line_error(invoke("train", *TINY, "--steps", "2", "--out", str(out)), 1, "already holds a run")
    assert (out / "checkpoint.h5").read_bytes() == before


def test_plot_two_runs_writes_png_with_both_curves(tmp_path):
    pytest.importorskip("matplotlib")
    runs = []
    for opt in ("adam", "sgd"):
        out = tmp_path / opt
        assert invoke("-q", "train", *TINY, "-o", opt, "--steps", "8", "--eval-every", "4",
                      "--out", str(out)).exit_code == 0
        runs.append(str(out))
    png = tmp_path / "cmp.png"
    r = invoke("plot", *runs, "--out", str(png), "--window", "3")
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    import matplotlib.image
    img = matplotlib.image.imread(str(png))
    # the default colour cycle draws run 1 in blue (#1f77b4) and run 2 in orange (#ff7f0e)
    rgb = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(rgb - colour).sum(axis=1) < 30).sum() > 50, colour


def test_plot_of_a_non_run_folder(tmp_path):
    one_line_error(invoke("plot", str(tmp_path), "--out", str(tmp_path / "x.png")), 1,
                   "not a run folder")


def test_verbose_prints_each_evaluation(tmp_path):
    r = CliRunner().invoke(cli, ["-v", "train", *TINY, "--steps", "4", "--eval-every", "2",
                                 "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert "step 2: train loss" in r.output and "step 4: train loss" in r.output


# -- precise batch-norm statistics for evaluation ------------------------------------------

def test_batch_statistics_are_the_mean_of_each_batch_s_statistics():
    """Batch norm first, so its input is the images themselves: the recomputed running
    mean / variance must be the plain mean over batches of each batch's per-channel mean
    and unbiased variance (float64)."""
    from hfmeta.layers import Flatten, Linear, Sequential
    from hfmeta.layers.batchnorm import BatchNorm
    from hfmeta.model import Model
    from hfmeta.problem import Problem

    model = Model(Sequential([("bn", BatchNorm()), ("flatten", Flatten()), ("fc", Linear(3))]),
                  (2, 4, 4), 3, dtype="float64")
    problem = Problem(model)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(k, 1 + k, (5, 2, 4, 4)), rng.integers(0, 3, 5)) for k in range(3)]
    state = problem.batch_statistics(model.init(0), batches)
    means = [x.mean(axis=(0, 2, 3)) for x, _ in batches]
    variances = [x.transpose(1, 0, 2, 3).reshape(2, -1).var(axis=1, ddof=1) for x, _ in batches]
    np.testing.assert_allclose(state["bn.running_mean"], np.mean(means, axis=0), rtol=1e-13)
    np.testing.assert_allclose(state["bn.running_var"], np.mean(variances, axis=0), rtol=1e-13)
    assert problem.state["bn.running_mean"].tolist() == [0.0, 0.0]    # running ones untouched


def test_precise_bn_changes_the_evaluation_not_the_training(tmp_path):
    """--precise-bn N: the steps and the running-average figures are those of a run
    without it; the test figures are those of Problem.evaluate with the statistics of the
    first N unaugmented training batches at the final weights."""
    from hfmeta.train import Run

    common = ["-q", "--seed", "3", "train", "--model", "resnet-mini", "--model-opt",
              "width=0.25", "-b", "16", "--steps", "4", "-o", "adam", "--hp", "lr=0.05"]
    assert invoke(*common, "--out", str(tmp_path / "plain")).exit_code == 0
    r = invoke(*common, "--precise-bn", "3", "--out", str(tmp_path / "precise"))
    assert r.exit_code == 0, r.output
    assert "statistics of 3 training batches" in r.output

    def records(name):                      # without the wall-clock times
        return [{k: v for k, v in json.loads(x).items() if k != "wall"}
                for x in open(tmp_path / name / "metrics.jsonl")]
    plain, precise = records("plain"), records("precise")
    assert [x for x in plain if x["kind"] == "step"] == [x for x in precise if x["kind"] == "step"]
    last_plain, last = plain[-1], precise[-1]
    assert (last["running_test_loss"], last["running_test_acc"]) == \
        (last_plain["test_loss"], last_plain["test_acc"])
    run = Run.open(str(tmp_path / "precise"))
    x, y = run.test
    batches = [run.dataset.batches("train", 16, seed=3, augment=False).batch_at(k)
               for k in range(3)]
    state = run.problem.batch_statistics(run.w, batches)
    assert run.problem.evaluate(run.w, x, y, state=state) == (last["test_loss"], last["test_acc"])
    assert last["test_loss"] != last["running_test_loss"]
    summary = json.load(open(tmp_path / "precise" / "summary.json"))
    assert (summary["precise_bn"], summary["running_test_acc"]) == (3, last["running_test_acc"])


def test_precise_bn_without_batch_norm_is_the_plain_evaluation(tmp_path):
    r = invoke("-q", "train", *TINY, "--steps", "3", "--precise-bn", "2",
               "--out", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output
    last = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")][-1]
    assert "running_test_acc" not in last and "batch norm" not in r.output


@pytest.mark.parametrize("key, value", [
    ("precise_bn", -1), ("precise_bn", True), ("precise_bn", 1.5), ("precise_bn", "3"),
    ("steps", 0), ("steps", -3), ("eval_every", 0), ("checkpoint_every", 0),
    ("checkpoint_every", -1), ("log_every", 0), ("batch_size", 0), ("epochs", 0),
    ("epochs", -1.0), ("epochs", float("nan")), ("epochs", "3")])
def test_a_bad_count_in_a_config_is_a_clean_error(tmp_path, key, value):
    """Every count of a run is checked before anything is written: a run of 0 steps, a
    checkpoint every 0 steps (a division by zero), negative epochs, ... are one UserError."""
    from hfmeta.errors import UserError
    from hfmeta.train import Run, RunConfig

    with pytest.raises(UserError, match=f"^{key} must be a"):
        Run.create(RunConfig(model="mlp", **{key: value}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["--steps", "0"], ["--steps", "-3"], ["--epochs", "0"],
                                  ["--epochs", "-1"], ["--eval-every", "0"],
                                  ["--checkpoint-every", "0"], ["--batch-size", "0"]])
def test_the_cli_refuses_bad_counts(tmp_path, args):
    """Click names the option (exit 2) and no run folder is made."""
    r = invoke("train", *TINY, *args, "--out", str(tmp_path / "run"))
    assert r.exit_code == 2 and args[0] in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_evaluate_gives_the_run_s_test_figures_and_writes_nothing(tmp_path):
    """`hfmeta evaluate RUN --precise-bn N` on a run trained with --precise-bn N: the figures
    of its last evaluation record, both kinds; the folder is left byte for byte."""
    out = tmp_path / "run"
    assert invoke("-q", "--seed", "2", "train", "--model", "resnet-mini", "--model-opt",
                  "width=0.25", "-b", "16", "--steps", "3", "-o", "sgd", "--precise-bn", "2",
                  "--out", str(out)).exit_code == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    last = [json.loads(x) for x in open(out / "metrics.jsonl")][-1]
    r = invoke("evaluate", str(out), "--precise-bn", "2")
    assert r.exit_code == 0, r.output
    running, precise = r.output.splitlines()[1:]
    assert "running BN averages" in running and "2 training batches" in precise
    assert f"test loss {last['running_test_loss']:.4f}" in running
    assert f"test accuracy {100 * last['running_test_acc']:.2f}%" in running
    assert f"test loss {last['test_loss']:.4f}" in precise
    assert f"test accuracy {100 * last['test_acc']:.2f}%" in precise
    r = invoke("evaluate", str(out))                       # without: the running averages only
    assert r.output.splitlines()[1].split() == \
        ["test", "loss", f"{last['running_test_loss']:.4f}", "test", "accuracy",
         f"{100 * last['running_test_acc']:.2f}%"]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_evaluate_needs_no_meta_parameter_file(tmp_path):
    """It built the run's optimizer, so a run trained with --meta FILE could not be
    evaluated once FILE had moved."""
    meta = tmp_path / "mine.h5"
    shutil.copy(shipped_path("mlhf"), meta)
    out = tmp_path / "run"
    assert invoke("-q", "train", "--model", "mlp", "--model-opt", "hidden=[8]", "-b", "16",
                  "--steps", "2", "--meta", str(meta), "--out", str(out)).exit_code == 0
    last = [json.loads(x) for x in open(out / "metrics.jsonl")][-1]
    meta.unlink()
    r = invoke("evaluate", str(out))
    assert r.exit_code == 0, r.output
    assert f"test accuracy {100 * last['test_acc']:.2f}%" in r.output
    one_line_error(invoke("train", "--resume", str(out), "--steps", "3"), 1, "does not exist")


def test_precise_bn_on_a_net_without_batch_norm_is_noted(tmp_path):
    """It was ignored without a word."""
    out = tmp_path / "run"
    r = invoke("train", "--model", "mlp", "--model-opt", "hidden=[8]", "-o", "sgd", "-b", "16",
               "--steps", "2", "--precise-bn", "3", "--out", str(out))
    assert r.exit_code == 0 and "mlp has no batch norm; --precise-bn changes nothing" in r.output
    r = invoke("evaluate", str(out), "--precise-bn", "3")
    assert r.exit_code == 0 and "--precise-bn changes nothing" in r.output
    r = invoke("-q", "evaluate", str(out), "--precise-bn", "3")       # -q: figures only
    assert r.exit_code == 0 and "test accuracy" in r.output and "note" not in r.output


def test_evaluate_of_a_non_run_folder_or_a_run_without_checkpoint(tmp_path):
    one_line_error(invoke("evaluate", str(tmp_path)), 1, "is not a run folder")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": "mlp", "optimizer": "adam"}))
    one_line_error(invoke("evaluate", str(out)), 1, "has no checkpoint.h5")


# -- found by a command-line audit (each failed before its fix) ---------------------------
def test_a_seed_beyond_int64_is_a_usage_error(tmp_path):
    """--seed 2^64 trained, then failed with a traceback at its first checkpoint (HDF5
    has no integer that large), losing the run."""
    one_line_error(invoke("--seed", str(2 ** 63), "train", *TINY, "--steps", "1",
                          "--out", str(tmp_path / "r")), 2, "--seed")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("edit,fragment", [
    ({"optimizer": "sgd"}, "disagree on optimizer"),
    ({"dtype": "float64"}, "disagree on dtype"),
    ({"hparams": {"lr": 0.5}}, "disagree on hparams")])
def test_resume_refuses_a_config_edited_away_from_its_checkpoint(tmp_path, edit, fragment):
    """config.json edited after the checkpoint: another optimizer ended in a KeyError
    traceback, another dtype resumed silently (no longer the same run)."""
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **edit}))
    one_line_error(invoke("-q", "train", "--resume", str(out), "--steps", "3"), 1, fragment,
                   "another configuration")


def test_resume_of_a_checkpoint_missing_optimizer_state(tmp_path):
    import h5py
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    with h5py.File(out / "checkpoint.h5", "a") as f:
        del f["optimizer/m"]
    one_line_error(invoke("-q", "train", "--resume", str(out), "--steps", "3"), 1,
                   "optimizer state lacks 'm'")


def test_resume_with_more_steps_saves_the_new_total(tmp_path):
    """--resume DIR --steps N: interrupted, the hint 'continue with --resume DIR' failed
    ('already taken 49 of its 2 steps'), since N was never saved; the finished run's old
    summary.json stayed beside the longer run.  Fewer steps than taken is refused."""
    from hfmeta.train import Run
    out = tmp_path / "run"
    assert invoke("-q", "train", *TINY, "--steps", "2", "--out", str(out)).exit_code == 0
    one_line_error(invoke("-q", "train", "--resume", str(out), "--steps", "1"), 1,
                   "already taken 2 steps, more than --steps 1")
    run = Run.resume(str(out), steps=4)               # what --resume does before training
    assert run.total_steps == 4 and not (out / "summary.json").exists()
    assert json.loads((out / "config.json").read_text())["steps"] == 4
    assert Run.resume(str(out)).total_steps == 4       # a later --resume without --steps
    r = invoke("-q", "train", "--resume", str(out))
    assert r.exit_code == 0 and "4 steps" in r.output


def test_default_run_folders_are_claimed_one_per_run(tmp_path):
    """Without --out the folder was named to the second: two runs started together wrote
    into one folder, and a second run in the same second was refused."""
    from hfmeta.train import Run, RunConfig
    cfg = RunConfig(model="mlp", model_options={"hidden": [16]}, optimizer="sgd", steps=1)
    base = str(tmp_path / "runs" / "same-second")
    first, second = Run.create(cfg, base, unique=True), Run.create(cfg, base, unique=True)
    assert (first.dir, second.dir) == (base, base + "-2")
    assert all(os.path.isfile(os.path.join(d, "config.json")) for d in (first.dir, second.dir))


def test_two_runs_started_into_one_out_at_once_do_not_share_it(tmp_path, monkeypatch):
    """Both passed the empty-folder check before either wrote, and the second overwrote
    the first's config.json and emptied its log.  The check is skipped here to stand for
    the second run having passed it in the moment before the first wrote."""
    from hfmeta import train
    cfg = train.RunConfig(model="mlp", model_options={"hidden": [16]}, optimizer="sgd", steps=1)
    out = str(tmp_path / "run")
    first = train.Run.create(cfg, out)
    with open(os.path.join(out, "metrics.jsonl"), "a") as log:
        log.write('{"step": 1}\n')
    monkeypatch.setattr(train, "refuse_to_overwrite", lambda run_dir: None)
    other = train.RunConfig(model="mlp", model_options={"hidden": [8]}, optimizer="adam", steps=1)
    with pytest.raises(train.UserError, match="was taken by another run meanwhile"):
        train.Run.create(other, out)
    assert json.loads(open(os.path.join(out, "config.json")).read())["optimizer"] == "sgd"
    assert open(os.path.join(out, "metrics.jsonl")).read() == '{"step": 1}\n'
    assert first.dir == out


@pytest.mark.parametrize("contents", [{"config.json": "{}"}, {"notes.txt": "mine"}])
def test_out_refuses_a_folder_with_files(tmp_path, contents):
    """--out into a folder without a checkpoint overwrote its config.json (a run killed
    before its first checkpoint, or the user's own files)."""
    out = tmp_path / "busy"
    out.mkdir()
    for name, text in contents.items():
        (out / name).write_text(text)
    one_line_error(invoke("-q", "train", *TINY, "--steps", "1", "--out", str(out)), 1,
                   "already holds a run" if "config.json" in contents else "is not empty")
    assert {p.name: p.read_text() for p in out.iterdir()} == contents


def test_ctrl_c_while_setting_up_is_one_line(tmp_path, monkeypatch):
    """Ctrl-C outside the training loop (building the model, gradcheck, bench) printed
    Click's 'Aborted!' with exit 1."""
    from hfmeta import train

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train.Run, "create", interrupt)
    one_line_error(invoke("-q", "train", *TINY, "--steps", "1", "--out", str(tmp_path / "r")),
                   130, "interrupted")


def test_a_non_finite_test_loss_stops_the_run(tmp_path):
    """Finite weights whose logits overflow: the run reported 'test loss nan' with exit 0
    and wrote NaN into summary.json."""
    out = tmp_path / "run"
    one_line_error(invoke("-q", "train", *TINY, "-o", "sgd", "--hp", "lr=1e12", "--steps", "2",
                          "--out", str(out)), 3, "non-finite test loss at step 2")
    assert not (out / "summary.json").exists()


def test_epochs_beyond_counting_is_one_line(tmp_path):
    one_line_error(invoke("-q", "train", *TINY, "--epochs", "1e308", "--out", str(tmp_path / "r")),
                   1, "--epochs 1e+308 is more steps than can be counted")


@pytest.mark.parametrize("command", [["train"], ["compare", "sgd"], ["meta-train"]])
def test_an_empty_data_name_is_refused(command):
    """--data '' said ' is a folder, not a dataset file' (a blank name, the wrong reason)."""
    one_line_error(invoke(*command, "--data", ""), 2, "--data", "not an empty string")


def test_learned_optimizers_name_every_option_they_take(tmp_path):
    """The unknown-option error listed only the constructor's options, not those the
    meta-parameter loading takes (untrained, seed, inputs); seed without untrained=true
    was silently ignored."""
    out = str(tmp_path / "r")
    one_line_error(invoke("-q", "train", *TINY[:4], "-o", "mlhf", "--hp", "nope=1",
                          "--steps", "1", "--out", out), 1,
                   "known: lr, n, curvature_batch, clip, restart, untrained, seed, inputs")
    one_line_error(invoke("-q", "train", *TINY[:4], "-o", "l2l", "--hp", "nope=1",
                          "--steps", "1", "--out", out), 1, "known: p, scale, hidden, seed, untrained")
    one_line_error(invoke("-q", "train", *TINY[:4], "-o", "mlhf", "--hp", "seed=2",
                          "--steps", "1", "--out", out), 1, "give it with untrained=true")


def _tiny_data(tmp_path):
    """28 training images of 1×3×3: 7 steps per epoch at batch size 4 (an odd count)."""
    path = tmp_path / "tiny.h5"
    rng = np.random.default_rng(0)
    with DatasetWriter(str(path), "tiny", ["0", "1", "2"], (1, 3, 3), {"source": "test"}) as w:
        w.append("train", rng.integers(0, 255, (28, 1, 3, 3), dtype=np.uint8), rng.integers(0, 3, 28))
        w.append("test", rng.integers(0, 255, (6, 1, 3, 3), dtype=np.uint8), rng.integers(0, 3, 6))
    return str(path)


def _tiny_run(tmp_path, **options):
    from hfmeta.train import Run, RunConfig
    cfg = RunConfig(model="mlp", model_options={"hidden": [4]}, data=_tiny_data(tmp_path),
                    optimizer="sgd", batch_size=4, **options)
    run = Run.create(cfg, str(tmp_path / "r"))
    assert run.batches.steps_per_epoch == 7
    run.train()
    return [json.loads(x) for x in open(tmp_path / "r" / "metrics.jsonl")]


def test_fractional_epochs_round_the_step_count(tmp_path):
    """--epochs 2.5 at 7 steps per epoch is 17.5 steps: rounded to 18, not cut to 17."""
    records = _tiny_run(tmp_path, epochs=2.5)
    assert [x["step"] for x in records if x["kind"] == "step"] == list(range(1, 19))


def test_default_evaluation_is_once_per_epoch(tmp_path):
    """Without --eval-every a run evaluates at the end of every epoch, not only at its end."""
    records = _tiny_run(tmp_path, epochs=3)
    assert [x["step"] for x in records if x["kind"] == "eval"] == [7, 14, 21]


def test_log_every_logs_every_n_th_step(tmp_path):
    """log_every=3: step records at steps 3, 6, 9, … (the n-th, 2n-th, … step)."""
    records = _tiny_run(tmp_path, steps=10, log_every=3)
    assert [x["step"] for x in records if x["kind"] == "step"] == [3, 6, 9]


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """The console script imports hfmeta.cli (Click, NumPy) itself: a Ctrl-C then gave a
    KeyboardInterrupt traceback."""
    import builtins
    from hfmeta import console
    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "hfmeta.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as stop:
        console.main(["info"])
    assert stop.value.code == 130
    assert capsys.readouterr().err == "hfmeta: error: interrupted\n"


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`hfmeta info | head -1`: the write to the closed pipe printed 'hfmeta: error:
    [Errno 32] Broken pipe'; now it stops quietly (Click's EPIPE handling), as Unix
    tools do.  The pipe is closed before the command writes (importing takes ~0.1 s)."""
    p = subprocess.Popen([sys.executable, "-c", "from hfmeta.console import main; main(['info'])"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1
    assert err == "", err
