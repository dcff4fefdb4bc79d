"""hfmeta.plot: the moving average, and what the figure of ``hfmeta plot`` shows (read off
the matplotlib Figure, not its pixels)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hfmeta.cli import cli
from hfmeta.plot import plot_runs, smooth


def test_smooth_is_a_trailing_mean_of_window_points():
    """Each point averages itself and the window - 1 before it (fewer at the start)."""
    assert np.allclose(smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    assert np.allclose(smooth([1, 2, 3, 4], 3), [1, 1.5, 2, 3])
    assert np.allclose(smooth([1, 2, 3, 4], 1), [1, 2, 3, 4])


def fake_run(folder, scale=1):
    """A run folder with 3 steps and 2 evaluations; samples and wall differ (x 1000)."""
    folder.mkdir()
    lines = [{"kind": "step", "step": k, "samples": 32 * k, "wall": 0.001 * 32 * k,
              "loss": float(scale * k)} for k in (1, 2, 3)]
    lines += [{"kind": "eval", "step": k, "samples": 32 * k, "wall": 0.001 * 32 * k,
               "train_loss": 1.0, "test_loss": 1.0, "test_acc": 0.25 * k} for k in (1, 3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "config.json").write_text(json.dumps({"optimizer": "sgd"}))
    return str(folder)


@pytest.fixture
def figures(monkeypatch):
    """The Figures plot_runs builds (it closes them after saving; they stay readable)."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made, subplots = [], plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: made.append(subplots(*a, **k)) or made[-1])
    return made


def test_columns_are_samples_then_wall_and_accuracy_is_in_percent(tmp_path, figures):
    run = fake_run(tmp_path / "r")
    plot_runs([run], str(tmp_path / "p.png"), window=1)
    (_, axes), = figures
    for col, x in ((0, [32, 64, 96]), (1, [0.032, 0.064, 0.096])):
        loss, = axes[0, col].get_lines()
        acc, = axes[1, col].get_lines()
        assert np.allclose(loss.get_xdata(), x) and np.allclose(loss.get_ydata(), [1, 2, 3])
        assert np.allclose(acc.get_xdata(), x[::2]) and np.allclose(acc.get_ydata(), [25, 75])
    assert axes[0, 0].get_xlabel() == "training samples seen"
    assert axes[1, 1].get_xlabel().startswith("wall time")
    assert axes[1, 0].get_ylabel() == "test accuracy (%)"


def test_the_legend_shows_the_labels_given_else_optimizer_and_folder(tmp_path, figures):
    runs = [fake_run(tmp_path / "a"), fake_run(tmp_path / "b", scale=2)]
    plot_runs(runs, str(tmp_path / "p.png"), labels=["first", "second"])
    plot_runs(runs, str(tmp_path / "q.png"))
    texts = [[t.get_text() for t in axes[0, 0].get_legend().get_texts()] for _, axes in figures]
    assert texts == [["first", "second"], ["sgd (a)", "sgd (b)"]]


def test_the_command_passes_window_and_log_or_linear_scale(tmp_path, figures):
    """``--window N`` smooths over N steps (and says so on the y axis); the loss axis is log
    unless ``--linear``."""
    run = fake_run(tmp_path / "r")
    for extra in ([], ["--window", "2", "--linear"]):
        r = CliRunner().invoke(cli, ["plot", run, "-o", str(tmp_path / "p.png"), *extra])
        assert r.exit_code == 0, r.output
    (_, log), (_, linear) = figures
    assert [log[0, c].get_yscale() for c in (0, 1)] == ["log", "log"]
    assert [linear[0, c].get_yscale() for c in (0, 1)] == ["linear", "linear"]
    assert log[0, 0].get_ylabel() == "training loss (moving average of 20)"
    assert linear[0, 0].get_ylabel() == "training loss (moving average of 2)"
    assert np.allclose(linear[0, 0].get_lines()[0].get_ydata(), [1, 1.5, 2.5])
