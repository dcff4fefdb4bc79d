"""hfmeta.bench.interleaved_medians: what it calls, and the warm-up before timing."""
import time

from hfmeta.bench import interleaved_medians


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
