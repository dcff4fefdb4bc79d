"""hfmeta.checks.Range, and the ranges written beside every option's default."""
import inspect
import json
import os

import pytest
from click.testing import CliRunner

from hfmeta.checks import (COUNT, FLAG, FRACTION, NATURAL, POSITIVE, SIZES, Choice, Range,
                           check_options, check_representable, optional)
from hfmeta.cli import cli
from hfmeta.errors import UserError
from hfmeta.meta.registry import LEARNED, _load
from hfmeta.models import OPTION_RANGES, ZOO
from hfmeta.optim import OPTIMIZERS


@pytest.mark.parametrize("allowed, good, bad", [
    (POSITIVE, [1e-9, 3, 2.5], [0, -1, "abc", True, None, float("nan"), float("inf"), [1]]),
    (FRACTION, [0, 0.5, 0.999], [1, 1.0, -0.1]),
    (COUNT, [1, 20], [0, -3, 2.0, 1.5, False]),
    (NATURAL, [0, 7], [-1, 0.0]),
    (optional(COUNT), [None, 4], [0]),
    (SIZES, [(4, 4), [16]], [4, (), (4, 0), (4, 2.5)]),
    (Range(1, whole=True, each=True, length=3), [(16, 32, 64)], [(16, 32)]),
    (Range(0, low_open=True, also=("auto",)), ["auto", 0.5], ["Auto", 0]),
])
def test_range_admits_what_it_says(allowed, good, bad):
    assert all(allowed.admits(v) for v in good)
    assert not any(allowed.admits(v) for v in bad)


def test_choice_admits_its_values_of_their_own_type_only():
    """1 == True and 0 == False in Python: a flag must still refuse 1, 0 and 1.0 (and a name
    choice its values' look-alikes), else ``--hp untrained=1`` passes as a flag."""
    assert FLAG.admits(True) and FLAG.admits(False)
    assert not any(FLAG.admits(v) for v in (1, 0, 1.0, 0.0, "true", None, [True]))
    names = Choice(("a", "b"))
    assert names.admits("b") and not names.admits("c") and not names.admits(("a",))


def test_the_error_names_owner_option_range_and_value():
    with pytest.raises(UserError, match=r"^sgd: lr must be a number > 0, got 'abc'$"):
        check_options("sgd", {"lr": "abc", "other": -1}, {"lr": POSITIVE})
    with pytest.raises(UserError, match=r"^momentum must be a number in \[0, 1\), got 1$"):
        check_options(None, {"momentum": 1}, {"momentum": FRACTION})
    with pytest.raises(UserError, match=r"a list of 3 whole numbers >= 1, got \(1, 2\)"):
        Range(1, whole=True, each=True, length=3).check("m", "channels", (1, 2))
    check_options("sgd", {"other": -1}, {"lr": POSITIVE})     # options not named: not checked


def _learned_classes():
    return [_load(name, "optimizer") for name in LEARNED]


@pytest.mark.parametrize("cls", list(OPTIMIZERS.values()) + _learned_classes(),
                         ids=lambda c: c.name)
def test_every_optimizer_s_defaults_are_in_its_ranges(cls):
    """Each range names a hyper-parameter the optimizer has, and admits its default; every
    numeric hyper-parameter has a range."""
    assert set(cls.ranges) <= set(cls.defaults)
    check_options(cls.name, cls.defaults, cls.ranges)
    numeric = {k for k, v in cls.defaults.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numeric <= set(cls.ranges), numeric - set(cls.ranges)


def test_the_mlhf_trainer_s_defaults_are_in_its_ranges():
    from hfmeta.meta.mlhf_train import TRAINER_RANGES, MetaTrainer
    params = inspect.signature(MetaTrainer).parameters
    assert set(TRAINER_RANGES) <= set(params)
    check_options("mlhf meta-training", {k: params[k].default for k in TRAINER_RANGES},
                  TRAINER_RANGES)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_s_option_defaults_are_in_its_ranges(name):
    params = inspect.signature(ZOO[name]).parameters
    options = [k for k in params if k not in ("in_shape", "classes")]
    assert set(OPTION_RANGES[name]) == set(options)
    check_options(name, {k: params[k].default for k in options}, OPTION_RANGES[name])


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("hfmeta: error: ")
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["--hp", "lr=abc"], "adam: lr must be a number > 0, got 'abc'"),     # was a NumPy traceback
    (["--hp", "beta1=1.5"], "adam: beta1 must be a number in [0, 1)"),
    (["-o", "mlhf", "--hp", "n=0"], "mlhf: n must be a whole number >= 1"),
    (["-o", "kfac", "--hp", "damping=0"], "kfac: damping must be a number > 0"),
    (["-o", "sou", "--hp", "mu=0"], "sou: mu must be a number > 0"),   # was 0/0 where h = 0
    (["-o", "mlhf", "--hp", "untrained=1"], "mlhf: untrained must be true or false, got 1"),
    (["--model", "cnn-small", "--model-opt", "channels=0"], "channels must be a whole number"),
    (["--model", "mlp", "--model-opt", "hidden=[0]"], "hidden must be a list of whole numbers"),
    (["--model", "convnet", "--model-opt", "width=0"], "width must be a number > 0"),
    (["--model", "cnn-big", "--model-opt", "channels=[4,8]"], "a list of 3 whole numbers"),
    # values float32 cannot hold: a NumPy warning, then training with a zero or inf step
    (["-o", "rmsprop", "--hp", "ms_init=1e300"], "rmsprop: ms_init=1e+300 overflows float32"),
    (["--hp", "eps=1e-50"], "adam: eps=1e-50 is 0 in float32"),
    (["-o", "mlhf", "--hp", "lr=1e39"], "mlhf: lr=1e+39 overflows float32"),
])
def test_train_refuses_bad_options_in_one_line_and_writes_nothing(tmp_path, args, fragment):
    r = invoke("-q", "train", "--model", "mlp", "-o", "adam", "--steps", "1", *args,
               "--out", str(tmp_path / "run"))
    one_line(r, fragment)
    assert not (tmp_path / "run").exists()


def test_values_beyond_the_dtype_are_refused_only_there():
    ranges = {"lr": POSITIVE, "steps": COUNT, "sizes": SIZES, "mode": Choice(("a", "b"))}
    fine = {"lr": 1e300, "steps": 10 ** 40, "sizes": [10 ** 40], "mode": "a"}
    check_representable("sgd", fine, ranges, "float64")          # counts are not cast
    check_representable("sgd", {"lr": 0.0, "steps": 10 ** 40}, ranges, "float32")
    check_representable("sgd", {"lr": 1e-45}, ranges, "float32")  # a subnormal, not 0
    with pytest.raises(UserError, match=r"^sgd: lr=1e\+300 overflows float32 \(largest 3.4e\+38\)"):
        check_representable("sgd", fine, ranges, "float32")
    with pytest.raises(UserError, match=r"^sgd: lr=-1e-46 is 0 in float32 \(smallest 1.4e-45\)"):
        check_representable("sgd", {"lr": -1e-46}, ranges, "float32")


@pytest.mark.parametrize("method, option, fragment", [
    ("mlhf", "meta_lr=1e39", "mlhf meta-training: meta_lr=1e+39 overflows float32"),
    ("l2l", "l2=1e-50", "l2l meta-training: l2=1e-50 is 0 in float32"),    # was l2 = 0, silently
    ("slstm", "scale=1e-50", "slstm meta-training: scale=1e-50 is 0 in float32"),  # an LSTM hparam
])
def test_meta_train_refuses_values_float32_cannot_hold(tmp_path, method, option, fragment):
    r = invoke("-q", "meta-train", "-m", method, "--model", "mlp", "-b", "8", "-n", "1",
               "--opt", "T=2", "--opt", option, "--out", str(tmp_path / "m.h5"))
    one_line(r, fragment)
    assert os.listdir(tmp_path) == []


def test_a_float64_run_takes_what_float32_refuses(tmp_path):
    r = invoke("-q", "--dtype", "float64", "train", "--model", "mlp", "--model-opt", "hidden=[4]",
               "-o", "rmsprop", "--hp", "ms_init=1e300", "--steps", "1", "-b", "8",
               "--out", str(tmp_path / "run"))
    assert r.exit_code == 0 and "train loss" in r.output, r.output


@pytest.mark.parametrize("args, fragment", [
    (["--opt", "bogus=1"], "mlhf meta-training: unknown option(s) bogus; known: T, n,"),
    # it listed only the L2L optimizer's p, scale, hidden and seed (which is refused)
    (["-m", "l2l", "--opt", "bogus=1"], "l2l meta-training: unknown option(s) bogus; known: T, "
                                        "meta_lr, l2, max_grad_norm, reset_prob, buffer, "
                                        "store_every, p, scale, hidden"),
    (["--opt", "T=0"], "mlhf meta-training: T must be a whole number >= 1"),
    (["--opt", "hidden=0"], "mlhf meta-training: hidden must be a list"),
    (["--opt", "store_every=0"], "store_every must be a whole number >= 1"),  # was a traceback
    (["--opt", "seed=3"], "hfmeta --seed N meta-train"),
    (["-m", "slstm", "--opt", "T=0"], "slstm meta-training: T must be"),      # was a traceback
    (["-m", "l2l", "--opt", "reset_prob=2"], "l2l meta-training: reset_prob must be"),
])
def test_meta_train_refuses_bad_options_in_one_line(tmp_path, args, fragment):
    r = invoke("-q", "meta-train", "--model", "cnn-small", "--model-opt", "channels=2",
               "-b", "8", "-n", "1", *args, "--out", str(tmp_path / "m.h5"))
    one_line(r, fragment)
    assert not (tmp_path / "m.h5").exists()


def test_compare_tunes_the_rest_of_the_grid_around_a_fixed_value_off_the_grid(tmp_path):
    """sgd:momentum=0.5 is not on Table 1's grid: the three learning rates are tried with it
    (it used to leave no grid point and end in a one-line 'min() arg is an empty sequence')."""
    out = tmp_path / "cmp"
    r = invoke("-q", "compare", "sgd", "--model", "mlp", "--model-opt", "hidden=[8]",
               "--steps", "2", "--batch-size", "16", "--hp", "sgd:momentum=0.5",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    row, = json.loads((out / "compare.json").read_text())
    assert row["grid_points"] == 3 and row["hparams"]["momentum"] == 0.5
    one_line(invoke("-q", "compare", "sgd", "--steps", "2", "--hp", "sgd:lr=-1",
                    "--out", str(tmp_path / "bad")), "sgd: lr must be a number > 0")


@pytest.mark.parametrize("args, fragment", [
    (["-o", "sou", "--hp", "diagonal=[1]"], "sou: diagonal must be one of becker-lecun"),
    (["-o", "slstm", "--hp", "untrained=true", "--hp", "joint=yes"],
     "slstm: joint must be true or false, got 'yes'"),
    (["-o", "mlhf", "--hp", "untrained=no"], "mlhf: untrained must be true or false"),
    (["-o", "mlhf", "--hp", "untrained=true", "--hp", "inputs=[1]"], "mlhf: inputs must be one of"),
    (["-o", "mlhf", "--hp", "untrained=true", "--hp", "seed=abc"], "mlhf: seed must be a whole"),
    (["-o", "mlhf", "--hp", "untrained=true", "--meta", "hfmeta/meta/shipped/mlhf.h5"],
     "mlhf: give a meta-parameter file or untrained=true, not both"),
    (["-o", "l2l", "--hp", "hidden=[4]"], "l2l: hidden come(s) from the meta-parameter file"),
])
def test_train_refuses_bad_names_and_flags_in_one_line(tmp_path, args, fragment):
    """Names and on/off options: a list where a name belongs used to be a TypeError traceback,
    'untrained=no' counted as true, and a saved LSTM size was silently overridden."""
    r = invoke("-q", "train", "--model", "mlp", "--steps", "1", *args,
               "--out", str(tmp_path / "run"))
    one_line(r, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--opt", "noise=abc"], "noise must be a number in [0, 1)"),      # was a traceback
    (["--opt", "use_rnn_p=maybe"], "use_rnn_p must be true or false"),
    (["--opt", "inputs=[1]"], "inputs must be one of tanh, logsign"),
    (["--opt", "train=p", "--opt", "use_rnn_p=false"], "train=p trains RNN_p"),
    (["--opt", "es_pairs=4"], "es_pairs do(es) not apply with objective='paper'"),
    (["--opt", "objective=es", "--opt", "T=5", "--opt", "noise=0"],
     "T, noise do(es) not apply with objective='es'"),
])
def test_meta_train_refuses_bad_names_and_flags_before_writing(tmp_path, args, fragment):
    r = invoke("-q", "meta-train", "--model", "cnn-small", "--model-opt", "channels=2",
               "-b", "8", "-n", "1", *args, "--out", str(tmp_path / "m.h5"))
    one_line(r, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["train", "--resume", ""], ["train", "--out", ""], ["train", "--meta", ""],
    ["info", "--model", ""], ["compare", "sgd", "--out", ""],
    ["data", "prepare", "mnist", "--out", ""], ["bench", "--items", ""],
    ["meta-train", "--out", "{tmp}"], ["plot", ".", "-o", "{tmp}"], ["bench", "--json", "{tmp}/"]])
def test_empty_names_and_folders_given_as_files_are_refused_at_once(tmp_path, args):
    """An empty string used to read as 'not given' (`train --resume ''` started a fresh run,
    `data prepare --out ''` wrote into the data folder); a folder given as an output file
    failed only after the work, leaving temporary files."""
    before = sorted(os.listdir(tmp_path))
    r = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert sorted(os.listdir(tmp_path)) == before


def test_meta_train_refuses_a_log_named_out(tmp_path):
    r = invoke("meta-train", "-n", "1", "--out", str(tmp_path / "m.jsonl"))
    one_line(r, "the log is written beside it")
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_options_it_would_ignore(tmp_path):
    """`train --resume RUN` takes the saved configuration: -o, --hp, --device ... used to be
    silently ignored (--device gpu even ran on the CPU)."""
    out = tmp_path / "run"
    assert invoke("-q", "train", "--model", "mlp", "-o", "adam", "--steps", "2",
                  "--out", str(out)).exit_code == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    for args in (["train", "--resume", str(out), "-o", "sgd", "--hp", "lr=1"],
                 ["--dtype", "float64", "train", "--resume", str(out), "--steps", "3"]):
        r = invoke(*args)
        assert r.exit_code == 2 and "cannot change it (only --steps can)" in r.output
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    r = invoke("--dtype", "float64", "evaluate", str(out))     # evaluate takes them
    assert r.exit_code == 0 and "test accuracy" in r.output


def test_compare_checks_every_optimizer_before_training_any(tmp_path):
    """A wrong meta-parameter file for the third optimizer used to fail after the first two
    had trained; now nothing runs.  Duplicates and stray --hp/--meta are refused."""
    out = tmp_path / "cmp"
    l2l_file = os.path.join(os.path.dirname(__file__), "..", "hfmeta", "meta", "shipped",
                            "l2l.h5")
    one_line(invoke("-q", "compare", "sgd", "adam", "mlhf", "--meta", f"mlhf={l2l_file}",
                    "--steps", "1", "--out", str(out)), "holds l2l meta-parameters, not mlhf")
    for args in (["sgd", "sgd"], ["sgd", "--hp", "adam:lr=1"], ["sgd", "--meta", "junk"]):
        assert invoke("compare", *args, "--steps", "1", "--out", str(out)).exit_code == 2
    assert not out.exists()


def test_a_run_diverging_before_its_first_checkpoint_says_so(tmp_path):
    r = invoke("train", "--model", "mlp", "-o", "sgd", "--hp", "lr=1e30", "--steps", "3",
               "--out", str(tmp_path / "run"))
    assert r.exit_code == 3 and "no checkpoint was written yet" in r.output


def test_a_run_given_relative_file_paths_resumes_from_another_folder(tmp_path, monkeypatch):
    """--data and --meta files are stored absolute in config.json (they were stored as
    typed, so resuming from another folder failed with "does not exist")."""
    import shutil
    from hfmeta.meta.registry import shipped_path
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copy(shipped_path("mlhf"), work / "meta.h5")
    monkeypatch.chdir(work)
    assert invoke("-q", "train", "--meta", "meta.h5", "--steps", "2", "-b", "16",
                  "--out", "run").exit_code == 0
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["meta"] == str(work / "meta.h5") and config["data"] == "mnist5k"
    monkeypatch.chdir(elsewhere)
    r = invoke("-q", "train", "--resume", str(work / "run"), "--steps", "3")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("option", ["--data", "--meta"])
def test_a_folder_given_as_a_data_or_meta_file_is_named_as_such(tmp_path, option):
    """It said 'does not exist' (--data) or 'corrupt or truncated HDF5 file' (--meta)."""
    one_line(invoke("-q", "train", option, str(tmp_path), "--out", str(tmp_path / "run")),
             f"{tmp_path} is a folder")
