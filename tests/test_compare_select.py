"""``hfmeta compare``'s choice of the best grid point, with ``Run.train`` replaced by fixed
summaries per point (sgd, momentum fixed: three learning rates 0.1, 0.01, 0.001)."""
import json
import os

import pytest
from click.testing import CliRunner

from hfmeta.cli import cli
from hfmeta.errors import NonFiniteLoss
from hfmeta.train import Run

GRID = ["--model", "mlp", "--model-opt", "hidden=[4]", "--batch-size", "16", "--grid-batch", "16",
        "--hp", "sgd:momentum=0.9", "--steps", "1"]
LRS = (0.1, 0.01, 0.001)


def compare(tmp_path, monkeypatch, outcomes, *args):
    """Run compare with point k's summary ``outcomes[k]`` = (train_loss, test_acc), or None
    for a point that diverges; returns (compare.json's row, the kept run folders)."""
    def train(self, on_step=None, on_eval=None):
        self.interrupted = []
        outcome = outcomes[LRS.index(self.cfg.hparams["lr"])]
        if outcome is None:
            raise NonFiniteLoss("non-finite loss at step 1 (sgd)")
        loss, acc = outcome
        return {"train_loss": loss, "test_loss": 1.0, "test_acc": acc, "wall": 0.1,
                "run_dir": self.dir}
    monkeypatch.setattr(Run, "train", train)
    out = tmp_path / "c"
    r = CliRunner().invoke(cli, ["-q", "compare", "sgd", *GRID, *args, "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    [row] = json.loads((out / "compare.json").read_text())
    return row, sorted(os.listdir(out / "sgd"))


OUTCOMES = [(0.5, 0.9), (0.2, 0.3), (0.9, 0.5)]


def test_default_selection_keeps_the_lowest_training_loss(tmp_path, monkeypatch):
    """--select train_loss (the default): the lowest training loss (point 1) is kept and
    reported, not the highest, nor the most accurate."""
    row, kept = compare(tmp_path, monkeypatch, OUTCOMES)
    assert row["train_loss"] == 0.2 and row["hparams"]["lr"] == 0.01
    assert kept == ["001"] and row["run_dir"].endswith(os.path.join("sgd", "001"))


def test_select_test_acc_keeps_the_highest_accuracy(tmp_path, monkeypatch):
    """--select test_acc: the highest test accuracy (point 0) wins, not the lowest."""
    row, kept = compare(tmp_path, monkeypatch, OUTCOMES, "--select", "test_acc")
    assert row["test_acc"] == 0.9 and row["hparams"]["lr"] == 0.1 and kept == ["000"]


@pytest.mark.parametrize("select, first", [("test_acc", None), ("train_loss", (float("nan"), 0.4))])
def test_a_diverged_point_is_never_the_best(tmp_path, monkeypatch, select, first):
    """A diverged point (test_acc NaN, loss inf) or one with a NaN training loss, listed
    first, is not kept over finite ones: min with NaN keys keeps whatever came first."""
    row, kept = compare(tmp_path, monkeypatch, [first, (0.6, 0.2), (0.3, 0.7)], "--select", select)
    assert row["hparams"]["lr"] == 0.001 and row["train_loss"] == 0.3 and kept == ["002"]
    assert not row.get("diverged")
