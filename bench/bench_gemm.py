"""Candidate CPU GEMM libraries side by side on ViT-B/32's GEMM shapes.

    .venv/bin/python bench/bench_gemm.py [--rounds 3] [--lib NAME=PATH ...]

Each library runs ``C = A @ B.T`` (row-major, B transposed: torch's Linear
layout, what jclip's Linear asks for) on the four GEMMs of one ViT-B/32
block at batch 32 (M = 32 x 50 tokens), in its own subprocess (each library
has its own thread pool; mixing them in one process would measure their
contention), rounds interleaved so that a load change hits every library.
PyTorch's ``F.linear`` runs as the reference.  Printed: GFLOP/s per shape
and over the block (the four shapes weighted by their FLOPs), the median of
the rounds.

Libraries found by default: the system oneDNN (libdnnl.so.2), oneDNN 3.x
and Intel MKL from pip wheels (``pip install onednn-cpu-gomp mkl``) and
OpenBLAS from ``scipy-openblas32``, each where installed; ``--lib`` adds
or replaces one (``dnnl3=/path/libdnnl.so.3``).  The kind of API is taken
from the file name (dnnl -> dnnl_sgemm, mkl -> cblas_sgemm with GNU
OpenMP threading, openblas -> scipy_cblas_sgemm).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = [(1600, 2304, 768), (1600, 768, 768), (1600, 3072, 768), (1600, 768, 3072)]   # M, N, K


def default_libs():
    libs = {}
    for path in ("/usr/lib/x86_64-linux-gnu/libdnnl.so.2", "/usr/lib64/libdnnl.so.2"):
        if os.path.isfile(path):
            libs["dnnl2-system"] = path
            break
    lib_dir = os.path.join(sys.prefix, "lib")
    for name, pattern in (("dnnl3-wheel", "libdnnl.so.3"), ("mkl-wheel", "libmkl_rt.so*")):
        found = sorted(glob.glob(os.path.join(lib_dir, pattern)))
        if found:
            libs[name] = found[0]
    try:
        import scipy_openblas32
        libs["openblas-wheel"] = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
    except ImportError:
        pass
    return libs


def _sgemm_caller(path):
    """A function (M, N, K, A, B, C) computing C = A @ B.T with the library at ``path``."""
    import ctypes
    if "mkl" in os.path.basename(path):
        os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
        os.environ.setdefault("MKL_INTERFACE_LAYER", "LP64")
    lib = ctypes.CDLL(path)
    f32p = ctypes.POINTER(ctypes.c_float)
    name = os.path.basename(path)
    if "dnnl" in name:
        fn, i = lib.dnnl_sgemm, ctypes.c_int64
        fn.argtypes = [ctypes.c_char, ctypes.c_char, i, i, i, ctypes.c_float, f32p, i, f32p, i,
                       ctypes.c_float, f32p, i]
        return lambda m, n, k, a, b, c: fn(b"N", b"T", m, n, k, 1.0, a, k, b, k, 0.0, c, n)
    fn = lib.scipy_cblas_sgemm if "openblas" in name else lib.cblas_sgemm
    i = ctypes.c_int
    fn.argtypes = [i, i, i, i, i, i, ctypes.c_float, f32p, i, f32p, i, ctypes.c_float, f32p, i]
    return lambda m, n, k, a, b, c: fn(101, 111, 112, m, n, k, 1.0, a, k, b, k, 0.0, c, n)


def run_one(name, path, reps):
    """GFLOP/s per shape of one library (called in the subprocess)."""
    import numpy as np
    rng = np.random.default_rng(0)
    out = []
    if name == "torch":
        import torch
        torch.set_num_threads(os.cpu_count())
        call = None
    else:
        call = _sgemm_caller(path)
    for m, n, k in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        if call is None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            step = lambda: torch.nn.functional.linear(ta, tb)  # noqa: E731
        else:
            import ctypes
            ptr = [x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for x in (a, b, c)]
            step = lambda: call(m, n, k, *ptr)  # noqa: E731
            step()
            assert np.allclose(c, a @ b.T, rtol=1e-3, atol=1e-2), f"{name}: wrong product"
        step()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        out.append(2.0 * m * n * k * reps / (time.perf_counter() - start) / 1e9)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--lib", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1], args.reps)))
        return
    libs = default_libs()
    libs.update(dict(item.split("=", 1) for item in args.lib))
    libs["torch"] = ""
    results = {name: [] for name in libs}
    for _ in range(args.rounds):
        for name, path in libs.items():
            proc = subprocess.run([sys.executable, __file__, "--reps", str(args.reps), "--child", name, path],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    flops = [2.0 * m * n * k for m, n, k in SHAPES]
    print(f"median of {args.rounds} interleaved rounds, {os.cpu_count()} threads, GFLOP/s")
    print("| library | " + " | ".join(f"{m}x{n}x{k}" for m, n, k in SHAPES) + " | block |")
    print("|---|" + "---:|" * (len(SHAPES) + 1))
    for name, runs in results.items():
        if not runs:
            continue
        med = [statistics.median(r[i] for r in runs) for i in range(len(SHAPES))]
        block = [sum(flops) / sum(f / g for f, g in zip(flops, r)) for r in runs]
        print(f"| {name} | " + " | ".join(f"{g:.0f}" for g in med) +
              f" | {statistics.median(block):.0f} (runs {', '.join(f'{b:.0f}' for b in block)}) |")


if __name__ == "__main__":
    main()
