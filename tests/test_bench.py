"""hfmeta.bench.interleaved_medians: what it calls, and the warm-up before timing;
the ``hfmeta bench`` command's checks of its options."""
import os
import time

import pytest
from click.testing import CliRunner

from hfmeta import bench
from hfmeta.bench import interleaved_medians
from hfmeta.cli import cli


def counting(calls, name, seconds=0.0):
    def fn():
        calls[name] += 1
        if seconds:
            time.sleep(seconds)
    return fn


def test_each_function_is_called_warmup_plus_repeats_times_without_warm_seconds():
    calls = {"a": 0, "b": 0}
    medians = interleaved_medians({k: counting(calls, k) for k in calls}, repeats=4, warmup=2)
    assert calls == {"a": 6, "b": 6} and set(medians) == {"a", "b"}


def test_warm_seconds_run_untimed_rounds_first():
    """At least ``warm_seconds`` of round-robin calls before the timed ones; the median is
    of the timed calls only (a sleep of 10 ms each)."""
    calls = {"a": 0, "b": 0}
    t0 = time.perf_counter()
    medians = interleaved_medians({k: counting(calls, k, 0.01) for k in calls}, repeats=3,
                                  warmup=0, warm_seconds=0.1)
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.1 + 2 * 3 * 0.01
    # whole rounds: both functions alike, at least one warm-up round beside the 3 timed ones
    assert calls["a"] == calls["b"] and calls["a"] >= 3 + 1
    assert all(0.01 <= m < 0.5 for m in medians.values())


# ---------------------------------------------------------------------------------------
# the ``hfmeta bench`` command
# ---------------------------------------------------------------------------------------
TINY = ["bench", "--model", "mlp", "--model-opt", "hidden=[8]", "--in-shape", "1,6,6",
        "--repeats", "1"]


def refuse_to_run(monkeypatch):
    """A ``bench.run`` that records its calls instead of timing: checks come before any work."""
    calls = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: calls.append(a) or 1 / 0)
    return calls


def test_mlhf_q_on_a_batch_of_fewer_than_4_has_a_curvature_batch_of_1():
    """A quarter of 3 examples is 0: the curvature batch is then 1 example, not an error."""
    r = CliRunner().invoke(cli, ["-q", *TINY, "-b", "3", "--items", "mlhf,mlhf-q"])
    assert r.exit_code == 0, r.output
    assert "mlhf-q" in r.stdout


def test_json_in_a_folder_that_cannot_be_written_is_refused_before_timing(tmp_path, monkeypatch):
    calls = refuse_to_run(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access          # as root, os.access says yes to a mode-555 folder: say no to ro
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k:
                        False if os.path.abspath(path) == str(ro) else access(path, mode, *a, **k))
    r = CliRunner().invoke(cli, [*TINY, "--json", str(ro / "x.json")])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("hfmeta: error: ") and str(ro / "x.json") in lines[0], lines[0]
    assert "not writable" in lines[0] and not calls


@pytest.mark.parametrize("seconds", ["nan", "NaN", "-nan"])
def test_warm_up_must_be_a_finite_number(monkeypatch, seconds):
    """Click's FloatRange lets NaN through (every comparison with it is false)."""
    calls = refuse_to_run(monkeypatch)
    r = CliRunner().invoke(cli, [*TINY, "--warm-up", seconds])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith("hfmeta: error: ") and "--warm-up" in lines[0], lines[0]
    assert not calls


# ---------------------------------------------------------------------------------------
# what the timings and the table report
# ---------------------------------------------------------------------------------------
def test_the_timing_is_the_median_so_one_slow_call_does_not_count(monkeypatch):
    """A fake clock gives durations 1, 1, 100 s: the median is 1 (a mean, 34, would let one
    hiccup of a shared machine decide the result)."""
    ticks = iter([0, 1, 1, 2, 2, 102])
    monkeypatch.setitem(bench.CLOCKS, "wall", lambda: next(ticks))
    assert interleaved_medians({"a": lambda: None}, repeats=3, warmup=0) == {"a": 1}


def test_items_are_timed_round_robin():
    """One call of each item per round (a b a b a b), not all of a then all of b: a load
    that comes and goes must hit every item alike."""
    order = []
    interleaved_medians({k: (lambda k=k: order.append(k)) for k in "ab"}, repeats=3, warmup=0)
    assert order == list("ababab")


def test_mlhf_q_has_a_quarter_size_curvature_batch():
    """``mlhf-q`` is MLHF with a curvature batch of batch_size // 4 (the docs' item table)."""
    from hfmeta.models import build
    model = build("mlp", (1, 6, 6), 10, hidden=[8])
    assert bench._make_optimizer("mlhf-q", model, 16).curvature_batch == 4
    assert bench._make_optimizer("mlhf", model, 16).curvature_batch is None


def test_the_table_divides_each_time_by_forward_backward_and_by_sgd():
    """Columns "÷ fwd+bwd" and "÷ SGD step" are the item's time over theirs, not the inverse."""
    from types import SimpleNamespace
    model = SimpleNamespace(name="m", num_params=10, in_shape=(1,), dtype="float32", device="cpu")
    results = {"fwdbwd": {"seconds": 0.5}, "sgd": {"seconds": 0.25}, "mlhf": {"seconds": 2.0}}
    row = bench.format_table(model, results, 8).splitlines()[-1].split()
    assert row[:4] == ["mlhf", "2000.0", "4.00", "8.00"], row
