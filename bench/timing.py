"""The benches' timer: the best of several runs after one warm-up (Jittor
compiles each new shape once, on the first call)."""
import time


def best_time(fn, repeats):
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
