"""Fault injection on the real commands (issue 22): a full disk
(``RLIMIT_FSIZE``, SIGXFSZ ignored so the write fails with EFBIG) while
train.sh, test.sh, ``jclip.extract`` and convert.py write, and a SIGKILL at
each write of train.sh and of ``jclip.extract`` (jclip/io.py's
JCLIP_KILL_AT_WRITE hook, which fires when a temporary is complete, just
before its rename).

Each failed run exits 1 with one ``error:`` line and no traceback, leaves the
previous outputs usable and no temporary file; a rerun completes and gives
what a run that was never interrupted gives.  On the miniature contest of
tests/test_pipeline_e2e.py (its ``pipeline`` fixture: trained with
``lpp.epochs`` 30, its result.txt); the retrain uses ``lpp.epochs=10``.
Every case starts Jittor subprocesses (about 5 s each): the file is slow.
"""
import json
import os
import shutil
import signal

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("open_clip")

from test_durable import PY, debris, one_error_line, run  # noqa: E402
from test_pipeline_e2e import pipeline  # noqa: E402,F401  (the fixture: the miniature contest, trained)
from test_checkpoint import save_torchscript, tiny_clip  # noqa: E402
from jclip.extract import FeaturesError, load_features  # noqa: E402
from jclip.weights.checkpoint import read_state_dict  # noqa: E402

NEW = ["--set", "lpp.epochs=10"]       # the retrain's setting (the trained heads: 30 epochs)
HEADS = ("lpp_rn.npz", "lpp_vit.npz", "dog_head.safetensors", "val_dogs.txt")


# ``python -m MODULE ...`` whose disk fills as its K-th atomic write begins:
# RLIMIT_FSIZE (SIGXFSZ ignored: the write fails with EFBIG) from the moment
# jclip.io makes that write's temporary.  Not from exec (preexec_fn), for a
# command that runs Jittor: Jittor rewrites files in place in the cache every
# process shares - its generated header (jit_flags.h, 34 kB) at each import,
# a kernel's source (up to ~15 kB) at its first use in a process - all larger
# than the miniature's outputs, so a limit in force from the start fails
# Jittor instead of the command's write and leaves those files truncated for
# everyone.  From write K on, Jittor's work for the outputs written so far is
# done.  convert.py runs no Jittor: its limit holds from exec.
FULL_DISK_FROM_WRITE = """
import os, resource, runpy, signal, sys, tempfile
k, limit, module = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
made, mkstemp = [0], tempfile.mkstemp

def filling(*args, **kw):
    if str(kw.get("prefix", "")).startswith(f".tmp-{os.getpid()}-"):    # jclip.io.atomic_open
        made[0] += 1
        if made[0] == k:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return mkstemp(*args, **kw)

tempfile.mkstemp = filling
sys.argv = [module] + sys.argv[4:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_module(module, args, full_disk=None, **kw):
    """``python -m module *args`` (train.sh and test.sh exec exactly that);
    ``full_disk=(k, limit)``: files of at most ``limit`` bytes from the k-th
    atomic write on."""
    if full_disk is None:
        return run([PY, "-m", module, *args], **kw)
    k, limit = full_disk
    return run([PY, "-c", FULL_DISK_FROM_WRITE, str(k), str(limit), module, *args], **kw)


def run_train_sh(p, out, *more, **kw):
    return run_module("jclip.pipeline", ["train", "--config", str(p["config"]), "--set", f"out_dir={out}",
                                         *more], **kw)


def run_test_sh(p, out, result, *more, **kw):
    return run_module("jclip.pipeline", ["test", "--config", str(p["config"]), "--set", f"out_dir={out}",
                                         "--result", str(result), *more], **kw)


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    return r


def write_log(path):
    """[(k, target)] of a JCLIP_WRITE_LOG file."""
    rows = [line.split(" ", 2) for line in open(path).read().splitlines()]
    return [(int(k), target) for _, k, target in rows]


def trained_copy(src, dst):
    """A copy of a trained out folder (its manifest names the heads relative
    to itself, so the copy's manifest names the copy's heads)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    assert all(not os.path.isabs(e["path"]) for e in m["outputs"].values()), m["outputs"]
    return dst


def staging_folders(out):
    return [n for n in os.listdir(out) if n.startswith(".train-")]


def heads(out):
    return {n: (out / n).read_bytes() for n in HEADS}


def assert_clean(*folders):
    for folder in folders:
        assert not debris(str(folder)), debris(str(folder))
    for folder in folders:
        if (folder / "manifest.json").exists():
            assert not staging_folders(folder), staging_folders(folder)


@pytest.fixture(scope="module")
def retrained(pipeline, tmp_path_factory):
    """A copy of the trained folder retrained with NEW, never interrupted: its
    write log (train.sh's writes in order, with their sizes), heads and result.txt."""
    tmp = tmp_path_factory.mktemp("retrained")
    out = tmp / "out"
    trained_copy(pipeline["work"] / "out", out)
    ok(run_train_sh(pipeline, out, *NEW, env={"JCLIP_WRITE_LOG": str(tmp / "log")}))
    log = write_log(tmp / "log")
    assert [k for k, _ in log] == list(range(1, len(log) + 1))
    sizes = [os.path.getsize(os.path.join(out, os.path.basename(t))) for _, t in log]
    result = tmp / "result.txt"
    ok(run_test_sh(pipeline, out, result, *NEW))
    assert result.read_bytes() != pipeline["first"]         # the retrain changes the answer
    return dict(out=out, log=log, sizes=sizes, heads=heads(out), result=result.read_bytes())


# --------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------

def test_train_sh_on_a_full_disk_keeps_the_previous_heads(pipeline, retrained, tmp_path):
    out = tmp_path / "out"
    trained_copy(pipeline["work"] / "out", out)
    before = (out / "manifest.json").read_bytes()
    names = [os.path.basename(t) for _, t in retrained["log"]]
    k = names.index("dog_head.safetensors") + 1          # the LP++ heads staged, the dog head fails
    r = run_train_sh(pipeline, out, *NEW, full_disk=(k, retrained["sizes"][k - 1] // 2))
    one_error_line(r)
    last = r.stderr.strip().splitlines()[-1]
    assert "dog_head.safetensors" in last and "File too large" in last, last
    assert (out / "manifest.json").read_bytes() == before
    assert_clean(out)
    # the previous heads still answer, byte for byte
    result = tmp_path / "result.txt"
    ok(run_test_sh(pipeline, out, result))
    assert result.read_bytes() == pipeline["first"]
    # a rerun completes: the heads of a retrain never interrupted
    ok(run_train_sh(pipeline, out, *NEW))
    assert heads(out) == retrained["heads"]
    assert_clean(out)


def test_test_sh_on_a_full_disk_keeps_the_previous_result(pipeline, retrained, tmp_path):
    out = tmp_path / "out"
    trained_copy(retrained["out"], out)
    stages = (out / "stages.txt").read_bytes()
    result = tmp_path / "result.txt"
    result.write_bytes(pipeline["first"])                 # the previous run's answer
    r = run_test_sh(pipeline, out, result, *NEW, full_disk=(1, len(retrained["result"]) // 2))
    one_error_line(r)
    last = r.stderr.strip().splitlines()[-1]
    assert "result.txt" in last and "File too large" in last, last
    assert result.read_bytes() == pipeline["first"] and (out / "stages.txt").read_bytes() == stages
    assert_clean(tmp_path, out)
    ok(run_test_sh(pipeline, out, result, *NEW))
    assert result.read_bytes() == retrained["result"]


def run_extract(p, out, **kw):
    return run_module("jclip.extract", ["--model", str(p["work"] / "weights" / "vit.pkl"),
                                        "--images", str(p["data"] / "TestSetB"), "--out", str(out),
                                        "--shard-size", "16", "--batch-size", "16"], **kw)


@pytest.fixture(scope="module")
def extracted(pipeline, tmp_path_factory):
    """jclip.extract of the miniature test folder (29 images: 2 shards), never
    interrupted: its write log and what load_features reads."""
    tmp = tmp_path_factory.mktemp("extracted")
    ok(run_extract(pipeline, tmp / "whole", env={"JCLIP_WRITE_LOG": str(tmp / "log")}))
    log = write_log(tmp / "log")
    names = [os.path.basename(t) for _, t in log]
    assert names == ["paths.txt", "index.json", "shard-00000.npy", "shard-00000.json",
                     "shard-00001.npy", "shard-00001.json"], names
    return dict(folder=tmp / "whole", names=names, features=load_features(str(tmp / "whole")))


def assert_same_features(folder, want):
    got = load_features(str(folder))
    assert got.paths == want.paths and got.index == want.index
    assert got.features.dtype == want.features.dtype
    assert np.array_equal(got.features, want.features) and np.array_equal(got.readable, want.readable)


def test_extract_on_a_full_disk_keeps_the_finished_shards(pipeline, extracted, tmp_path):
    """An earlier run killed after shard 0; the resumed run on a full disk fails
    at shard 1's array: shard 0 is still the finished one, shard 1 has no record
    (it is never counted as done), and the next run finishes it."""
    out = tmp_path / "f"
    k = extracted["names"].index("shard-00001.npy") + 1
    r = run_extract(pipeline, out, env={"JCLIP_KILL_AT_WRITE": str(k)})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    shard0 = (out / "shard-00000.npy").read_bytes()
    # the resumed run's first write: shard 1's array
    r = run_extract(pipeline, out, full_disk=(1, os.path.getsize(extracted["folder"] / "shard-00001.npy") // 2))
    one_error_line(r)
    last = r.stderr.strip().splitlines()[-1]
    # numpy's np.save writes through a C stdio stream and may lose the EFBIG of its
    # last flush (the array is then short on disk): the read-back check catches it
    assert "shard-00001.npy" in last and ("File too large" in last or "read back is damaged" in last), last
    assert "1 of 2 shards already done" in r.stdout
    assert (out / "shard-00000.npy").read_bytes() == shard0
    assert not (out / "shard-00001.json").exists() and not (out / "shard-00001.npy").exists()
    assert_clean(out)
    with pytest.raises(FeaturesError, match="shard-00001.npy: missing or incomplete"):
        load_features(str(out))
    r = ok(run_extract(pipeline, out))
    assert "1 of 2 shards already done" in r.stdout
    assert_same_features(out, extracted["features"])
    assert_clean(out)


def convert_cmd(src, out):
    return [PY, "convert.py", str(src), "--out", str(out)]


def test_convert_on_a_full_disk_keeps_the_previous_weights(tmp_path):
    old_src = save_torchscript(*tiny_clip(1, 32, seed=3), tmp_path / "old.pt")
    new_src = save_torchscript(*tiny_clip(1, 32, seed=4), tmp_path / "new.pt")
    ref = tmp_path / "ref" / "w.safetensors"
    ok(run(convert_cmd(new_src, ref)))                     # a conversion never interrupted
    out = tmp_path / "out" / "w.safetensors"
    ok(run(convert_cmd(old_src, out)))
    before = out.read_bytes()
    old_sd, old_meta = read_state_dict(out)
    r = run(convert_cmd(new_src, out), limit=os.path.getsize(ref) // 2)
    one_error_line(r)
    last = r.stderr.strip().splitlines()[-1]
    assert "w.safetensors" in last and "File too large" in last, last
    assert out.read_bytes() == before
    sd, meta = read_state_dict(out)                        # the previous weights still load
    assert meta == old_meta and all(np.array_equal(sd[k], v) for k, v in old_sd.items())
    assert_clean(tmp_path)
    ok(run(convert_cmd(new_src, out)))
    assert out.read_bytes() == ref.read_bytes()
    assert_clean(tmp_path)


# --------------------------------------------------------------------------
# A SIGKILL at each write
# --------------------------------------------------------------------------

def test_train_sh_killed_at_each_write_leaves_old_or_new_heads_usable(pipeline, retrained, tmp_path):
    """Kill k of N: the old heads answer (test.sh with the old configuration,
    the old result.txt byte for byte) until the manifest naming the new ones is
    in place, the new ones (the new configuration, the new result) after;
    never neither.  A following train.sh completes with the heads of a retrain
    never interrupted."""
    log = retrained["log"]
    n = len(log)
    swap = next(k for k, t in log if os.path.basename(t) == "manifest.json")   # the first manifest write
    states = []
    for k in range(1, n + 1):
        out = tmp_path / f"k{k}"
        before = (trained_copy(pipeline["work"] / "out", out) / "manifest.json").read_bytes()
        r = run_train_sh(pipeline, out, *NEW, env={"JCLIP_KILL_AT_WRITE": str(k)})
        assert r.returncode == -signal.SIGKILL, (k, r.returncode, r.stderr[-2000:])
        epochs = json.loads((out / "manifest.json").read_text())["config"]["lpp"]["epochs"]
        state = {30: "old", 10: "new"}[epochs]
        assert state == "new" or (out / "manifest.json").read_bytes() == before, k
        result = tmp_path / f"result-{k}.txt"
        ok(run_test_sh(pipeline, out, result, *(NEW if state == "new" else [])))
        assert result.read_bytes() == (retrained["result"] if state == "new" else pipeline["first"]), k
        states.append(state)
        ok(run_train_sh(pipeline, out, *NEW))
        assert heads(out) == retrained["heads"], k
        assert_clean(out)
        shutil.rmtree(out)
    assert states == ["old"] * swap + ["new"] * (n - swap), states


def test_extract_killed_at_each_write_resumes_to_the_same_features(pipeline, extracted, tmp_path):
    for k in range(1, len(extracted["names"]) + 1):
        out = tmp_path / f"k{k}"
        r = run_extract(pipeline, out, env={"JCLIP_KILL_AT_WRITE": str(k)})
        assert r.returncode == -signal.SIGKILL, (k, r.returncode, r.stderr[-2000:])
        with pytest.raises(FeaturesError):                 # never taken for complete
            load_features(str(out))
        ok(run_extract(pipeline, out))
        assert_same_features(out, extracted["features"])
        assert_clean(out)
