"""jclip.extract with 1 and 2 ranks (mpirun) on the same image list, in one run.

Random full-size ViT-B/32 weights and N generated 500x375 JPEGs (those of
bench_pipeline.py).  Each rank count runs twice into fresh folders: the first
compiles Jittor's kernels, the second is timed.  Reported: the encoding
images/s extract prints (model loading and start-up excluded) and the wall
time of the whole command; the arrays of 1 and 2 ranks are compared byte
for byte.  On a 2-core machine two ranks share the cores (expect ~1x).

    .venv/bin/python bench/bench_extract.py --n 256 --shard-size 64
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="images")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dir", default=os.path.join(HERE, "out", "extract"))
    a = p.parse_args()
    os.environ.setdefault("log_silent", "1")
    from bench_pipeline import make_images, make_weights
    from jclip.extract import load_features
    images = os.path.join(a.dir, "images")
    make_images(images, a.n)
    weights = make_weights(os.path.join(HERE, "out", "pipeline", "weights"))["ViT-B/32"]
    mpirun = shutil.which("mpirun")
    launch = {1: [], 2: [mpirun, "--oversubscribe", "-np", "2"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])}
    if mpirun is None:
        del launch[2]
        print("mpirun not found: 1 rank only (bash setup.sh --dev installs OpenMPI)")
    rows, feats = [], {}
    for ranks, prefix in launch.items():
        for attempt in ("warm-up", "timed"):
            out = os.path.join(a.dir, f"features-{ranks}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = prefix + [sys.executable, "-m", "jclip.extract", "--model", weights, "--images", images,
                            "--out", out, "--shard-size", str(a.shard_size), "--batch-size", str(a.batch_size)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
        rate = float(re.search(r"([\d.]+) images/s on", r.stdout).group(1))
        rows.append({"ranks": ranks, "images": a.n, "encoding_images_per_s": rate, "wall_s": round(wall, 1)})
        feats[ranks] = load_features(out).features
        print(f"{ranks} rank(s): {rate:.1f} images/s encoding, {wall:.1f} s wall for {a.n} images", flush=True)
    same = len(feats) < 2 or feats[1].tobytes() == feats[2].tobytes()
    dim = feats[1].shape[1]
    info = {"cpus": os.cpu_count(), "shard_size": a.shard_size, "batch_size": a.batch_size, "rows": rows,
            "identical_1_vs_2_ranks": same, "gather_bytes_per_image": dim * 4}
    with open(os.path.join(a.dir, "results.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"arrays of 1 and 2 ranks identical: {same}; gathered per image: {dim * 4} bytes (float32)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
