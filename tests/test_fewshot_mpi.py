"""``python -m jclip.fewshot`` under mpirun (marked slow; skipped where OpenMPI
is absent): 2 ranks share the encoding of a tiny study and give the results
of one process (the CSV bar its timing column, the cached features bit for
bit, the learned prompts), rank 0 alone printing and writing; an image that
fails on one rank fails the run with that rank named; ``--features`` from
``jclip.extract`` replaces the image encoding (same results with 2 ranks)."""
import csv
import io
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from reference import build_reference  # noqa: E402
from test_fewshot import make_folder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 4


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    from jclip.weights.checkpoint import save_state_dict
    root = tmp_path_factory.mktemp("fewshot_mpi")
    _, state = build_reference("tiny-vit", seed=11)
    model = root / "tiny.pkl"
    save_state_dict(model, state, {"model": "tiny-vit"})
    # 4 classes x 9 images: 20 train and 16 test, several batches of 4 per list;
    # 4 x 80 prompts: two batches of 256, one per rank
    return make_folder(root / "colours", per_class=9), str(model)


def fewshot(prefix, data, model, out, *extra, timeout=600):
    """Run the CLI (under ``prefix``); a hung run is killed by ``timeout``'s
    process, never by pytest's (a process that imported Jittor exits itself
    when a child of it dies of a signal)."""
    cmd = ["--data", str(data), "--model", model, "--shots", "1", "2", "--seeds", "1", "2",
           "--methods", "zeroshot", "linear_probe", "tip_adapter", "coop", "--coop-epochs", "2",
           "--templates", "imagenet80", "--batch-size", str(BATCH), "--output", str(out / "run"),
           "--cache", str(out / "cache"), "--no-progress", *extra]
    env = dict(os.environ, log_silent="1", PYTHONPATH=REPO)
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run(["timeout", "-s", "KILL", str(timeout), *prefix, sys.executable, "-m", "jclip.fewshot",
                           *cmd], cwd=REPO, env=env, capture_output=True, text=True)


def without_seconds(path):
    """The CSV's text with the timing column (which differs between any two runs) left out."""
    rows = list(csv.reader(open(path, newline="", encoding="utf-8")))
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    assert len(keep) == len(rows[0]) - 1
    buf = io.StringIO()
    csv.writer(buf).writerows([[r[i] for i in keep] for r in rows])
    return buf.getvalue()


def cached_features(cache):
    """{file name: feature bytes} of a feature cache folder."""
    out = {}
    for dirpath, _, files in os.walk(cache):
        for name in files:
            if name.endswith(".npz"):
                with np.load(os.path.join(dirpath, name), allow_pickle=False) as z:
                    out[name] = z["features"].tobytes()
    return out


@pytest.mark.slow
def test_two_ranks_give_the_one_process_study(mpirun, study_inputs, tmp_path):
    data, model = study_inputs
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = fewshot([], data, model, one)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = fewshot(mpirun, data, model, two)
    assert r2.returncode == 0, r2.stderr[-3000:]
    csv1, csv2 = one / "run" / "results.csv", two / "run" / "results.csv"
    assert without_seconds(csv1) == without_seconds(csv2)
    assert len(without_seconds(csv1).splitlines()) == 1 + 4 * 2 * 2
    # what the ranks encoded, gathered on rank 0 into its cache: bit for bit
    f1, f2 = cached_features(one / "cache"), cached_features(two / "cache")
    assert len(f1) == 3 and f1 == f2          # train images, test images, prompts
    assert sorted(os.listdir(one / "run")) == sorted(os.listdir(two / "run")) == \
        ["accuracy.png", "accuracy.svg", "prompts", "results.csv", "run.json"]
    for name in sorted(os.listdir(one / "run" / "prompts")):
        assert (one / "run" / "prompts" / name).read_bytes() == (two / "run" / "prompts" / name).read_bytes()
    # only rank 0 prints the table and writes
    assert r2.stdout.count("wrote ") == 1 and r2.stdout.count("Tip-Adapter ") == r1.stdout.count("Tip-Adapter ")


@pytest.mark.slow
def test_an_unreadable_image_on_the_other_rank_is_named_and_skipped(mpirun, study_inputs, tmp_path):
    # as in one process: reported with its path, counted, left out (not fatal),
    # though the rank that read it is not the one writing the outputs
    import shutil
    from jclip import distributed
    from jclip.fewshot.datasets import load_dataset
    data, model = study_inputs
    broken = tmp_path / "colours"
    shutil.copytree(data, broken)
    (broken / "yellow" / "8.png").write_bytes(b"not an image")
    ds = load_dataset(str(broken))
    where = ds.train_paths.index(str(broken / "yellow" / "8.png")) if \
        str(broken / "yellow" / "8.png") in ds.train_paths else None
    paths, first = (ds.train_paths, where) if where is not None else \
        (ds.test_paths, ds.test_paths.index(str(broken / "yellow" / "8.png")))
    bad = next(r for r in range(2) if first in range(len(paths))[distributed.shard(len(paths), BATCH, of=(r, 2))])
    assert bad == 1          # the rank that is not the one writing
    r = fewshot(mpirun, broken, model, tmp_path / "out", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "8.png: unreadable image; skipped" in r.stderr and "1 unreadable image(s) skipped" in r.stderr, \
        r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_features_from_extract_replace_the_encoding(mpirun, study_inputs, tmp_path):
    import shutil
    data, model = study_inputs
    data = shutil.copytree(data, tmp_path / "colours")      # an image is added below
    feats = tmp_path / "features"
    r = subprocess.run(["timeout", "-s", "KILL", "300", sys.executable, "-m", "jclip.extract", "--model", model,
                        "--images", str(data), "--out", str(feats), "--batch-size", str(BATCH),
                        "--shard-size", "8"], cwd=REPO, env=dict(os.environ, log_silent="1", PYTHONPATH=REPO),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = fewshot([], data, model, one, "--features", str(feats))
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = fewshot(mpirun, data, model, two, "--features", str(feats))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert without_seconds(one / "run" / "results.csv") == without_seconds(two / "run" / "results.csv")
    for out in (one, two):      # no image was encoded: the cache holds the prompts only
        assert [n for n in cached_features(out / "cache") if n.startswith("images")] == []
        assert len(cached_features(out / "cache")) == 1
    # a folder that lacks an image of the dataset: one line, status 2
    shutil.copy(data / "red" / "0.png", data / "red" / "new.png")
    r3 = fewshot([], data, model, tmp_path / "three", "--features", str(feats))
    assert r3.returncode == 2 and "new.png: not in the features folder" in r3.stderr, r3.stderr[-2000:]
