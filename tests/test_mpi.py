"""jclip.distributed: the helpers without mpirun (no-ops, the shard arithmetic),
then 2 ranks on CPU under mpirun (marked slow; skipped where OpenMPI is absent):
bit-exact gathers, drive's batch-aligned shards, a failing or killed rank
failing the whole run with its rank named; and the pipeline's shared decode
(two towers with one preprocessing decode each image once, same features)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jclip import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# one process: every helper is a no-op
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n,unit,world", [(0, 1, 2), (1, 1, 2), (7, 1, 2), (29, 16, 2), (4305, 64, 8),
                                          (100, 7, 3), (5, 4, 8), (64, 64, 1)])
def test_shards_cover_the_list_once_contiguous_equal_and_batch_aligned(n, unit, world):
    parts = [distributed.shard(n, unit, of=(r, world)) for r in range(world)]
    covered = [i for s in parts for i in range(n)[s]]
    assert covered == list(range(n))                           # contiguous, in rank order, once
    for s in parts:
        assert s.start % unit == 0 or s.start == n              # cut at batch boundaries
    sizes = [len(range(n)[s]) for s in parts]
    units = [-(-k // unit) for k in sizes]
    assert max(units) - min(units) <= 1                         # equal up to one batch
    assert units == sorted(units, reverse=True)                 # the first ranks take the extra


def test_without_mpirun_everything_is_a_no_op(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert (distributed.in_mpi(), distributed.rank(), distributed.world_size(), distributed.is_root()) == \
        (False, 0, 1, True)
    assert distributed.pick_gpu() is None and distributed.same_threads() is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    a = np.arange(6, dtype=np.float16).reshape(3, 2)
    assert distributed.allgather_rows(a) is a and distributed.allgather_rows(None).shape == (0,)
    assert distributed.broadcast_object({"x": [1, "y"]}) == {"x": [1, "y"]}
    assert distributed.allgather_object([1]) == [[1]]
    calls = []
    assert distributed.drive(lambda enc: enc(["a", "b"]) * 2,
                             lambda items: calls.append(items) or np.ones(len(items)), unit=1).tolist() == [2, 2]
    assert calls == [["a", "b"]]
    with distributed.failures_end_the_run():       # plain behaviour: the exception propagates
        with pytest.raises(ValueError):
            raise ValueError("x")


def test_rank_picks_gpu_local_rank_mod_count(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")       # the user's list is honoured
    assert distributed.pick_gpu() == "5" and os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(distributed.glob, "glob", lambda pattern: [])
    assert distributed.pick_gpu() is None                     # no GPU: CPU ranks


# --------------------------------------------------------------------------
# 2 ranks under mpirun
# --------------------------------------------------------------------------

def run_ranks(mpirun, script, tmp_path, timeout=300):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, log_silent="1", PYTHONPATH=REPO)
    return subprocess.run(mpirun + [sys.executable, str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


COLLECTIVES = """
    import json, os, sys
    import numpy as np
    from jclip import distributed as d
    d.start()
    with d.failures_end_the_run():
        r, w = d.rank(), d.world_size()
        import jittor as jt
        assert (jt.rank, jt.world_size, jt.in_mpi) == (r, w, True)
        # bit patterns arithmetic would not keep: -0.0, NaN payloads, subnormals, float16
        rng = np.random.default_rng(r)
        mine = rng.normal(size=(3 + r, 5)).astype(np.float32)
        mine[0, 0] = -0.0
        mine.view(np.uint32)[0, 1] = 0x7FC00123 + r
        mine.view(np.uint32)[0, 2] = 7     # a subnormal, set by its bits (FTZ-proof)
        got = d.allgather_rows(mine)
        half = d.allgather_rows(mine.astype(np.float16))
        empty = d.allgather_rows(None if r == 1 else mine)
        obj = d.broadcast_object({"from": r, "paths": ["a b", "ü"]} if r == 0 else None)
        seen = []
        def encode(items):
            seen.append(list(items))
            return np.array([[float(i)] for i in items])
        out = d.drive(lambda enc: [enc(list(range(10))).ravel().tolist(), enc([])[:0].tolist(),
                                   enc(list(range(3))).ravel().tolist()], encode, unit=4)
        np.save(f"{os.environ['OUT']}/rank{r}.npy", got.view(np.uint32))
        np.save(f"{os.environ['OUT']}/half{r}.npy", half.view(np.uint16))
        json.dump({"rank": r, "obj": obj, "seen": seen, "out": out, "empty": empty.shape[0],
                   "threads": os.environ.get("OMP_NUM_THREADS")},
                  open(f"{os.environ['OUT']}/rank{r}.json", "w"))
"""


@pytest.mark.slow
def test_two_ranks_gather_bit_for_bit_and_drive_splits_whole_batches(mpirun, tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    r = run_ranks(mpirun, COLLECTIVES, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = []
    for rank in range(2):
        rng = np.random.default_rng(rank)
        m = rng.normal(size=(3 + rank, 5)).astype(np.float32)
        m[0, 0] = -0.0
        m.view(np.uint32)[0, 1] = 0x7FC00123 + rank
        m.view(np.uint32)[0, 2] = 7   # by bits: an earlier test may have left flush-to-zero on
        expected.append(m)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npy")
        assert got.tolist() == np.concatenate(expected).view(np.uint32).tolist()   # every rank, every bit
        half = np.load(tmp_path / f"half{rank}.npy")
        assert half.tolist() == np.concatenate(expected).astype(np.float16).view(np.uint16).tolist()
    info = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert all(i["obj"] == {"from": 0, "paths": ["a b", "ü"]} for i in info)
    assert [i["empty"] for i in info] == [3, 3]
    # 10 items in batches of 4 -> units [0-3][4-7][8-9]: rank 0 takes two, rank 1 one; 3 items: rank 0 alone
    assert info[0]["seen"] == [list(range(8)), [0, 1, 2]]
    assert info[1]["seen"] == [[8, 9]]          # an empty share: encode is not called
    assert info[0]["out"] == [[float(i) for i in range(10)], [], [0.0, 1.0, 2.0]] and info[1]["out"] is None
    assert info[0]["threads"] == str(os.cpu_count())     # one process's thread count: same sums


FAILING = """
    import os, sys, time
    import numpy as np
    from jclip import distributed as d
    d.start()
    with d.failures_end_the_run():
        if d.rank() == {bad}:
            time.sleep(1)
            {how}
        d.broadcast_object(None, root={bad})     # the healthy rank waits for the failing one
        open(os.path.join(os.environ["OUT"], f"done{{d.rank()}}"), "w").write("x")
"""


@pytest.mark.slow
@pytest.mark.parametrize("bad,how,expect", [
    (1, 'raise RuntimeError("disk full on this host")', "rank 1 of 2: RuntimeError: disk full on this host"),
    (0, 'sys.exit("error: no such file: Dataset/x.jpg")', "rank 0 of 2: no such file: Dataset/x.jpg"),
    (1, "os.kill(os.getpid(), 9)", "rank 1"),
])
def test_a_failing_rank_fails_the_whole_run_naming_the_rank(mpirun, tmp_path, monkeypatch, bad, how, expect):
    monkeypatch.setenv("OUT", str(tmp_path))
    r = run_ranks(mpirun, FAILING.format(bad=bad, how=how), tmp_path, timeout=120)
    assert r.returncode != 0
    assert expect in r.stderr + r.stdout, r.stderr[-2000:]
    assert not list(tmp_path.glob("done*"))       # the other rank never went on as if all was well


# --------------------------------------------------------------------------
# two towers with one preprocessing: each image decoded once, same features
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_towers_sharing_a_preprocessing_decode_each_image_once(tmp_path, monkeypatch, photos):
    pytest.importorskip("torch")
    from reference import build_reference
    import jclip
    from jclip.data import images as images_mod
    from jclip.features.encode import encode_image_files
    from jclip.pipeline import backbones
    from jclip.pipeline.config import load_config
    from jclip.weights.checkpoint import save_state_dict
    paths = []
    for i, img in enumerate(photos()):
        paths.append(str(tmp_path / f"p{i}.jpg"))
        img.convert("RGB").save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(3, str(tmp_path / "bad.jpg"))
    towers = []
    for key, seed in (("a", 1), ("b", 2)):
        _, state = build_reference("tiny-vit", seed=seed)
        w = str(tmp_path / f"{key}.pkl")
        save_state_dict(w, state, {"model": "tiny-vit"})
        model, pre = jclip.load(w, device="cpu")
        towers.append(backbones.LoadedBackbone(key, model, pre, type("Spec", (), {"model": "tiny-vit"})(),
                                      jclip.weights_sha256(model)))
    assert towers[0].preprocess.id == towers[1].preprocess.id
    decoded = []
    real = images_mod.load_images

    def counting(batch_paths, *a, **kw):
        decoded.extend(batch_paths)
        return real(batch_paths, *a, **kw)
    monkeypatch.setattr(images_mod, "load_images", counting)
    for cache in (str(tmp_path / "cache"), None):
        cfg = load_config(None, ["batch_size=4", "workers=2", f"cache_dir={cache or 'null'}"])
        decoded.clear()
        errors = {}
        got = backbones.encode_files(towers, paths, cfg, "both", errors)
        assert sorted(decoded) == sorted(paths)                     # once, for both towers
        monkeypatch.setattr(images_mod, "load_images", real)
        for t in towers:                                            # reference: each tower alone
            feats, ok, errs = encode_image_files(t.model, paths, t.preprocess, 4, progress=False)
            assert ok == [i for i in range(len(paths)) if i != 3]
            np.testing.assert_array_equal(got[t.key][0][ok], feats)
            assert not got[t.key][0][3].any() and got[t.key][1].tolist() == [i != 3 for i in range(len(paths))]
        monkeypatch.setattr(images_mod, "load_images", counting)
        assert list(errors) == [paths[3]]
    # a second run reads both towers from the cache: nothing decoded
    decoded.clear()
    cfg = load_config(None, ["batch_size=4", f"cache_dir={tmp_path / 'cache'}"])
    again = backbones.encode_files(towers, paths, cfg, "both", {})
    assert decoded == [] and all(np.array_equal(again[k][0], got[k][0]) for k in again)


LEAVE = """
    import os
    import numpy as np
    from jclip import distributed as d
    d.start()
    with d.failures_end_the_run():
        d.allgather_object(d.rank())
        d.leave()                       # rank 1 exits here
        import jittor as jt
        # Jittor's optimizer all-reduces gradients under MPI: after leave, rank 0
        # steps alone instead of waiting for the rank that left
        lin = jt.nn.Linear(3, 2)
        opt = jt.optim.SGD(lin.parameters(), 0.1)
        opt.step(lin(jt.array(np.ones((4, 3), np.float32))).sum())
        open(os.path.join(os.environ["OUT"], f"alone{d.rank()}-{d.world_size()}-{int(jt.in_mpi)}"), "w").close()
"""


@pytest.mark.slow
def test_after_leave_rank_0_works_alone_and_the_others_exit(mpirun, tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    r = run_ranks(mpirun, LEAVE, tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["alone0-1-0", "script.py"]
