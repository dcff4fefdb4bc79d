"""`hfmeta meta-train --resume`: the run goes on where it was saved (data, draws, log)."""
import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta.cli import cli
from hfmeta.storage import load_checkpoint

TINY = ["-q", "meta-train", "--model", "cnn-small", "--model-opt", "channels=2", "-b", "8",
        "--save-every", "1"]
METHODS = {"l2l": ["-m", "l2l", "--opt", "T=2"],
           "mlhf": ["-m", "mlhf", "--opt", "T=2"],
           "es": ["-m", "mlhf", "--opt", "objective=es", "--opt", "es_pairs=1",
                  "--opt", "es_steps=2"]}


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def meta_train(method, out, *more):
    r = invoke(*TINY, *METHODS[method], *more, "--out", str(out))
    assert r.exit_code == 0, r.output
    return r


def theta(path):
    banks = load_checkpoint(path)["banks"]
    return np.concatenate([banks[name]["theta"] for name in sorted(banks)])


def log(path):
    return [json.loads(line) for line in open(os.path.splitext(path)[0] + ".jsonl")]


def steps(records, key):
    return [(r["iteration"], r[key]) for r in records if key in r]


@pytest.mark.parametrize("method", ["l2l", "mlhf", "es"])
def test_resume_goes_on_to_new_data_and_draws(tmp_path, method):
    """A resumed run used to restart its batch stream and random draws: iterations 4-6
    replayed the unrolls of 1-3.  ES keeps no replay buffer, so it resumes exactly."""
    full, part = tmp_path / "full.h5", tmp_path / "part.h5"
    meta_train(method, full, "-n", "6")
    meta_train(method, part, "-n", "3")
    meta_train(method, part, "-n", "3", "--resume")
    key = {"l2l": "first_loss", "mlhf": "loss", "es": "es_fitness"}[method]
    resumed, straight = steps(log(part), key), steps(log(full), key)
    assert [i for i, _ in resumed] == [1, 2, 3, 4, 5, 6]          # each iteration once
    assert resumed[:3] == straight[:3]
    if method == "es":
        assert resumed == straight
        np.testing.assert_array_equal(theta(part), theta(full))
    else:                      # a fresh replay buffer: not bit for bit, but no repeated data
        assert [v for _, v in resumed[3:]] != [v for _, v in resumed[:3]]
    evaluations = [r for r in log(part) if "evaluation" in r]
    if method != "l2l":        # one before -> after, from the very start of the run
        assert len(evaluations) == 1
        first = [r["validation"] for r in log(part) if r.get("iteration") == 0]
        assert evaluations[0]["evaluation"]["before"] == first[0]


def test_resume_cuts_the_log_back_to_the_last_save(tmp_path):
    """Lines logged after the last save (a kill) and a line cut short were kept, so the
    resumed iterations appeared twice and the next record was glued onto the torn line."""
    out = tmp_path / "m.h5"
    meta_train("l2l", out, "-n", "3")
    jsonl = tmp_path / "m.jsonl"
    extra = [dict(r, iteration=r["iteration"] + 3) for r in log(out)[-2:]]   # after the save
    jsonl.write_text(jsonl.read_text() + "".join(json.dumps(r) + "\n" for r in extra)
                     + '{"iteration": 6, "meta_lo')
    meta_train("l2l", out, "-n", "2", "--resume")
    assert [r["iteration"] for r in log(out)] == [1, 2, 3, 4, 5]


def test_ctrl_c_in_the_last_meta_iteration_finishes_the_run(tmp_path, monkeypatch):
    """It exited 130 advising --resume, with no summary, and `--resume -n 1` ran a 4th."""
    from hfmeta.meta import l2l
    unroll = l2l.MetaTrainer._unroll

    def interrupted_in_the_third(self):
        if self.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return unroll(self)
    monkeypatch.setattr(l2l.MetaTrainer, "_unroll", interrupted_in_the_third)
    r = meta_train("l2l", tmp_path / "m.h5", "-n", "3")
    assert "3 meta-iterations" in r.output
    assert load_checkpoint(tmp_path / "m.h5")["extra"]["iteration"] == 3


def test_non_finite_meta_parameters_stop_the_run(tmp_path):
    r = invoke(*TINY, *METHODS["mlhf"], "--opt", "meta_lr=1e30", "-n", "4",
               "--save-every", "10", "--out", str(tmp_path / "m.h5"))
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 3 and lines[-1].startswith("hfmeta: error: meta-parameters not "
                                                     "finite after meta-iteration"), r.output
    assert "nothing was saved" in lines[-1] and not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("other, message", [
    (["--model", "mlp"], "was meta-trained on --model cnn-small; --resume continues it on "
                         "that model, not mlp"),
    (["--model", "cnn-small", "--model-opt", "channels=3"], "with options {'channels': 2}"),
    (["--model", "cnn-small", "--model-opt", "channels=2", "-b", "16"],
     "saved batch_size=8, now 16"),
])
def test_resume_refuses_another_target_net_or_batch_size(tmp_path, other, message):
    """It resumed silently and rewrote the file's configuration to the new settings."""
    out = tmp_path / "m.h5"
    meta_train("l2l", out, "-n", "1")
    before = out.read_bytes()
    args = ["-q", "meta-train", *other, *METHODS["l2l"], "-n", "1", "--resume", "--out", str(out)]
    if "-b" not in other:
        args[2:2] = ["-b", "8"]
    r = invoke(*args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and lines[-1].startswith("hfmeta: error: "), r.output
    assert message in lines[-1] and out.read_bytes() == before


def test_ctrl_c_in_the_final_evaluation_is_one_line(tmp_path, monkeypatch):
    """Click printed 'Aborted!' and exited 1."""
    from hfmeta.meta import mlhf_train
    evaluate, calls = mlhf_train.MetaTrainer.evaluate, []

    def interrupted_the_second_time(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(self, *args, **kwargs)
    monkeypatch.setattr(mlhf_train.MetaTrainer, "evaluate", interrupted_the_second_time)
    r = invoke(*TINY, *METHODS["mlhf"], "-n", "1", "--out", str(tmp_path / "m.h5"))
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 130 and lines[-1] == (
        "hfmeta: error: interrupted in the final held-out evaluation; the meta-parameters of "
        f"meta-iteration 1 are saved in {tmp_path / 'm.h5'}"), r.output
