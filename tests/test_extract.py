"""jclip.extract: shards that equal a direct encoding, unreadable images named,
resume after a kill or a corrupt shard, another model refused, float16, and
(under mpirun, slow) 2 ranks writing the same arrays as 1."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jclip.extract import FeaturesError, list_images, load_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD, BATCH = 8, 4


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """29 images in nested folders (+ a corrupt one, a text file that is not an image)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("extract")
    rng = np.random.default_rng(0)
    images = root / "images"
    for i in range(29):
        folder = images / ("a" if i % 3 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (30 + i, 44 - i % 7, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img {i}.{('jpg', 'png')[i % 2]}")
    (images / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (images / "notes.txt").write_text("not an image")
    return root, str(images)


@pytest.fixture(scope="module")
def collection(image_folder):
    """(folder, a tiny CLIP weights file, the images)."""
    pytest.importorskip("torch")
    from reference import build_reference
    from jclip.weights.checkpoint import save_state_dict
    root, images = image_folder
    _, state = build_reference("tiny-vit", seed=5)
    weights = root / "tiny.pkl"
    save_state_dict(str(weights), state, {"model": "tiny-vit"})
    return root, str(weights), images


def extract(*args, check=True, **kw):
    env = dict(os.environ, log_silent="1")
    cmd = [sys.executable, "-m", "jclip.extract", *args]
    r = subprocess.run(kw.pop("prefix", []) + cmd, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def args(weights, images, out, *more):
    return ["--model", weights, "--images", images, "--out", str(out), "--shard-size", str(SHARD),
            "--batch-size", str(BATCH), *more]


@pytest.fixture(scope="module")
def first(collection):
    root, weights, images = collection
    out = root / "one"
    r = extract(*args(weights, images, out))
    return out, r


DIRECT = f"""
import json, sys
import numpy as np
import jclip
from jclip.features.encode import encode_image_files
weights, paths, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model, pre = jclip.load(weights, device="cpu")
arrays = {{}}
for start in range(0, len(paths), {SHARD}):
    feats, ok, _ = encode_image_files(model, paths[start:start + {SHARD}], pre, {BATCH}, progress=False)
    arrays[f"feats{{start}}"], arrays[f"ok{{start}}"] = feats, np.array(ok, np.int64)
np.savez(out, **arrays)
"""


@pytest.mark.slow
def test_shards_equal_a_direct_encoding_and_name_the_unreadable_image(collection, first):
    _, weights, images = collection
    out, r = first
    f = load_features(str(out))
    paths = list_images(images)
    assert f.paths == paths and len(paths) == 30                # the .txt is not an image
    assert sorted(os.listdir(out)) == ["index.json", "paths.txt"] + [
        f"shard-{i:05d}.{e}" for i in range(4) for e in ("json", "npy")]
    # reference: the library's encoder, in a fresh interpreter as extract runs (pytest's
    # own process may carry thread or flush-to-zero settings from earlier tests)
    ref = out.parent / "reference.npz"
    subprocess.run([sys.executable, "-c", DIRECT, weights, json.dumps(paths), str(ref)], cwd=REPO,
                   env=dict(os.environ, log_silent="1"), check=True, capture_output=True, timeout=300)
    with np.load(ref) as z:
        for start in range(0, len(paths), SHARD):
            feats, ok = z[f"feats{start}"], z[f"ok{start}"]
            np.testing.assert_array_equal(f.features[start:start + SHARD][ok], feats)
    bad = paths.index(os.path.join(images, "a", "broken.jpg"))
    assert not f.features[bad].any() and f.readable.tolist() == [i != bad for i in range(30)]
    assert f"{paths[bad]}: unreadable image" in r.stderr and "1 unreadable" in r.stdout
    rec = json.loads((out / f"shard-{bad // SHARD:05d}.json").read_text())
    assert list(rec["unreadable"]) == [paths[bad]]
    index = json.loads((out / "index.json").read_text())
    assert (index["images"], index["dim"], index["dtype"], index["shard_size"]) == (30, 32, "float32", SHARD)
    # rows by path, in any order; a path it does not hold is named
    x, ok = f.rows([paths[5], paths[0]])
    np.testing.assert_array_equal(x, f.features[[5, 0]])
    with pytest.raises(FeaturesError, match="elsewhere.jpg: not in the features folder"):
        f.rows(["/elsewhere.jpg"])


def test_a_list_file_gives_the_same_index(image_folder, tmp_path):
    _, images = image_folder
    paths = list_images(images)
    lst = tmp_path / "list.txt"
    # relative to the list's folder, `path label` lines, duplicates, CRLF
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    lst.write_text("\r\n".join(f"{p} 3" if i % 2 else p for i, p in enumerate(rel + rel[:3])) + "\r\n")
    assert list_images(str(lst)) == paths


@pytest.mark.slow
def test_resume_after_a_kill_and_after_a_corrupt_shard(collection, first, tmp_path):
    _, weights, images = collection
    want = load_features(str(first[0])).features
    out = tmp_path / "killed"
    # killed from a helper process: a process that imported Jittor (this one may
    # have) exits itself when one of its children dies of a signal
    killer = f"""
import os, signal, subprocess, sys, time
p = subprocess.Popen({[sys.executable, "-m", "jclip.extract", *args(weights, images, out, "--shard-size", "4")]!r},
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def records():
    folder = {str(out)!r}
    return os.path.isdir(folder) and [f for f in os.listdir(folder) if f.startswith("shard-") and f.endswith(".json")]
t0 = time.time()
while not records() and p.poll() is None and time.time() - t0 < 120:
    time.sleep(0.02)
p.send_signal(signal.SIGKILL)
p.wait()
"""
    subprocess.run([sys.executable, "-c", killer], cwd=REPO, env=dict(os.environ, log_silent="1"),
                   check=True, timeout=300)
    done = len(list(out.glob("shard-*.json")))
    assert 0 < done < 8, "the kill did not land half-way"
    # shards of 4 = the same batches of 4 as the first run's shards of 8: the same bits
    r = extract(*args(weights, images, out, "--shard-size", "4"))
    assert f"{done} of 8 shards already done; resuming" in r.stdout      # a record is written last
    np.testing.assert_array_equal(load_features(str(out)).features, want)
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]

    # a truncated array and a missing record: only those two shards are encoded again
    out2 = tmp_path / "corrupt"
    extract(*args(weights, images, out2))
    npy = out2 / "shard-00001.npy"
    npy.write_bytes(npy.read_bytes()[:-50])
    (out2 / "shard-00002.json").unlink()
    with pytest.raises(FeaturesError, match="shard-00001.npy: missing or incomplete"):
        load_features(str(out2))
    r = extract(*args(weights, images, out2))
    assert "2 of 4 shards already done" in r.stdout and "(16 encoded now" in r.stdout
    np.testing.assert_array_equal(load_features(str(out2)).features, want)


@pytest.mark.slow
def test_another_model_or_setting_is_refused_and_float16_is_the_cast(collection, first, tmp_path):
    root, weights, images = collection
    out = first[0]
    r = extract(*args(weights, images, out, "--dtype", "float16"), check=False)
    assert r.returncode == 1 and "holds other features (dtype differ" in r.stderr and "use another --out" in r.stderr
    r = extract(*args(weights, str(root / "nothing"), tmp_path / "x"), check=False)
    assert r.returncode == 2 and "nothing: no such folder or list file" in r.stderr    # a usage error
    half = tmp_path / "half"
    extract(*args(weights, images, half, "--dtype", "float16"))
    f16 = np.load(half / "shard-00000.npy")
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, load_features(str(out)).features[:SHARD].astype(np.float16))
    with pytest.raises(FeaturesError, match="features of .* not 'ViT-B/32'"):
        load_features(str(out), model="ViT-B/32")


@pytest.mark.slow
def test_two_ranks_write_the_same_arrays_and_resume(collection, first, tmp_path, mpirun):
    _, weights, images = collection
    want = (first[0] / "paths.txt").read_bytes(), load_features(str(first[0])).features
    out = tmp_path / "two"
    r = extract(*args(weights, images, out), prefix=mpirun)
    assert r.stdout.count("30 images in 4 shards") == 1          # rank 0 alone reports
    assert r.stderr.count("broken.jpg: unreadable image") == 1
    f = load_features(str(out))
    assert (out / "paths.txt").read_bytes() == want[0]
    assert f.features.tobytes() == want[1].tobytes()
    (out / "shard-00003.json").unlink()
    r = extract(*args(weights, images, out), prefix=mpirun)
    assert "3 of 4 shards already done" in r.stdout
    assert load_features(str(out)).features.tobytes() == want[1].tobytes()


def test_a_folder_that_is_not_features_names_the_file_it_lacks(tmp_path):
    with pytest.raises(FeaturesError, match=r"\(no index.json and no paths.txt\)"):
        load_features(str(tmp_path))
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(FeaturesError, match=r"\(no paths.txt\)$"):
        load_features(str(tmp_path))
