"""The benches' timers.  Jittor compiles each new shape once, on the first
call, so every function gets one untimed call first."""
import os
import statistics
import time


def interleaved(fns, rounds, repeats=1):
    """{name: [seconds per round]} for the functions in ``fns`` ({name: fn}),
    timed in turn within each round (best of ``repeats``), so that a load
    change on a shared machine hits every side alike."""
    for fn in fns.values():
        fn()
    out = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            out[name].append(min(times))
    return out


def median_ratio(slow, fast):
    """Median over rounds of slow/fast (per-round ratios: the load cancels)."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def with_env(name, value, fn):
    """``fn`` wrapped to run with the environment variable ``name`` set to ``value``."""
    def run():
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop(name)
            else:
                os.environ[name] = old
    return run
