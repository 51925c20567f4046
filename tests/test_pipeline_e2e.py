"""End to end, as a user runs it: process.py, convert.py, train.sh, test.sh, budget.py, val.sh.

A miniature contest dataset in the exact layout, with real class names from
../shared/data/jittor4 (every domain, unseen cars in classes_b.txt only),
mixed .jpg/.jpeg/.png, a corrupt file, a grayscale and a CMYK image; tiny
random checkpoints in the original torch formats (OpenAI-style fp16
TorchScript CLIPs, an official-named ConvNeXt-V2 {'model': sd}).
The whole flow takes about 80 s on 2 idle cores: every test here is slow.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from reference import build_reference  # noqa: E402
from jclip.pipeline.cascade import fallback_ids  # noqa: E402
from jclip.data.contest import natural_key, read_classes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "..", "shared", "data", "jittor4")
PY = sys.executable
# classes per domain in the miniature: dogs >= 5 so the dog head has a top-5
PER_DOMAIN = {"Animal": 2, "Caltech-101": 2, "Food-101": 2, "Thu-dog": 5, "Stanford-Cars": 3}
TRAIN_PER_CLASS = 10
VAL_PER_CLASS = 5      # 2 of them choose epochs (lpp / dog_head val_per_class), 3 are measured


def run(*cmd, cwd, ok=True):
    env = dict(os.environ, log_silent="1", PYTHON=PY)
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def class_image(rng, cls, size):
    """A noisy image whose colour depends on the class (so heads can learn)."""
    base = np.array([(cls * 67) % 256, (cls * 131) % 256, (cls * 29 + 80) % 256], np.float32)
    arr = base + rng.normal(0, 30, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def save(img, path, kind=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "gray":
        img = img.convert("L")
    elif kind == "cmyk":
        img = img.convert("CMYK")
    img.save(path, quality=90)


def make_dataset(root):
    """Dataset/ with TrainSet/, train.txt, classes.txt, classes_b.txt, TestSetB/."""
    real = read_classes(os.path.join(REAL, "classes_b.txt"))
    names = []
    for domain, n in PER_DOMAIN.items():
        names += [c for c in real if c.startswith(domain + "_")][:n]
    seen = [c for c in names if not c.startswith("Stanford-Cars_")]
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(f"{c} {i}" for i, c in enumerate(seen)))       # no trailing newline, as the real one
    with open(os.path.join(root, "classes_b.txt"), "w") as f:
        f.write("\n".join(f"{c} {i}" for i, c in enumerate(names)))
    lines = []
    for cid, c in enumerate(seen):
        domain, folder = c.split("_", 1)
        for n in range(1, TRAIN_PER_CLASS + 1):
            ext = ("jpg", "jpeg", "png")[n % 3] if cid % 2 else "jpg"
            rel = f"TrainSet/{domain}/{folder}/{n}.{ext}"
            kind = "gray" if (cid, n) == (1, 2) else "cmyk" if (cid, n) == (2, 3) else None
            save(class_image(rng, cid, (44, 36)), os.path.join(root, rel), kind)
            lines.append(f"{rel} {cid}")
    # a corrupt training image in the first class: process.py must replace it if picked
    bad = os.path.join(root, f"TrainSet/{seen[0].replace('_', '/', 1)}/{TRAIN_PER_CLASS + 1}.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines.append(f"TrainSet/{seen[0].replace('_', '/', 1)}/{TRAIN_PER_CLASS + 1}.jpg 0")
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    test = os.path.join(root, "TestSetB")
    os.makedirs(test)
    n = 0
    for cid in range(len(names)):
        for _ in range(2):
            n += 1
            ext = ("jpg", "jpeg", "png")[n % 3]
            kind = "gray" if n == 4 else "cmyk" if n == 7 else None
            save(class_image(rng, cid, (40 + n, 52)), os.path.join(test, f"image_{n}.{ext}"), kind)
    with open(os.path.join(test, f"image_{n + 1}.jpg"), "wb") as f:
        f.write(b"corrupt")
    return names, seen


def make_checkpoints(folder):
    """Original-format checkpoints: TorchScript CLIPs (fp16), ConvNeXt {'model': sd}."""
    paths = {}
    for name in ("tiny-vit", "tiny-rn"):
        model, _ = build_reference(name)
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        model = model.half()
        traced = torch.jit.trace(model, (torch.randn(1, 3, size, size).half(),
                                         torch.randint(0, 49408, (1, 77))), check_trace=False)
        paths[name] = os.path.join(folder, f"{name}.pt")
        torch.jit.save(traced, paths[name])
    torch.manual_seed(0)
    sd = timm.create_model("convnextv2_atto", pretrained=False).state_dict()
    # the official release names (stages.s.b.dwconv ...), as in convnextv2_*_1k_224_ema.pt
    from jclip.catalog import prepare_state_dict
    _, official = prepare_state_dict({k: v.numpy() for k, v in sd.items()}, "timm")
    paths["convnext"] = os.path.join(folder, "convnextv2_atto_1k_224_ema.pt")
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in official.items()}},
               paths["convnext"])
    counts = {"tiny-vit": None, "tiny-rn": None,
              "convnext": sum(int(np.prod(v.shape)) for v in official.values())}
    return paths, counts


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("contest")
    data = work / "Dataset"
    data.mkdir()
    names, seen = make_dataset(str(data))
    ckpt = work / "pretrained"
    ckpt.mkdir()
    src, counts = make_checkpoints(str(ckpt))
    n_seen, dogs = len(seen), [i for i, c in enumerate(seen) if c.startswith("Thu-dog_")]
    cfg = json.load(open(os.path.join(REPO, "jclip", "pipeline", "default.json")))
    # a configuration written before the stage heads existed: the optional `stages`
    # section and the sweep's head candidates left out (default.json's: InMaP, LP++)
    del cfg["stages"], cfg["sweep"]["unseen_heads"], cfg["sweep"]["seen_heads"]
    cfg["data"]["root"] = str(data)
    cfg["data"]["lists"] = str(work / "out" / "lists")
    cfg["out_dir"] = str(work / "out")
    cfg["cache_dir"] = str(work / "cache")
    cfg["batch_size"] = 16
    cfg["backbones"] = {"vit": {"model": "tiny-vit", "weights": str(work / "weights" / "vit.pkl")},
                        "rn": {"model": "tiny-rn", "weights": str(work / "weights" / "rn.pkl")}}
    cfg["lpp"].update(epochs=30, val_per_class=2)
    cfg["inmap"].update(iters=50)
    cfg["dog_head"].update(model="convnextv2_atto", weights=str(work / "weights" / "cnx.pkl"),
                           epochs=4, batch_size=8, size=32, val_per_class=2)
    cfg["cascade"].update(unseen_from=n_seen, dog_range=[dogs[0], dogs[-1]])
    cfg["sweep"].update(templates=["imagenet7", "single"], lpp_epochs=[30, 10], inmap_tau_t=[0.01, 0.02],
                        inmap_tau_i=[0.04], inmap_iters=[25, 50], mix_weights=[0.0, 0.5, 1.0])
    config = work / "cascade.json"
    config.write_text(json.dumps(cfg, indent=1))
    logs = {}
    logs["process"] = run(PY, "process.py", "--root", str(data), "--out", cfg["data"]["lists"],
                          "--seed", "3", "--val-per-class", str(VAL_PER_CLASS), cwd=REPO)
    for key, out in (("tiny-vit", "vit"), ("tiny-rn", "rn"), ("convnext", "cnx")):
        run(PY, "convert.py", src[key], "--out", str(work / "weights" / f"{out}.pkl"), cwd=REPO)
    logs["train"] = run("bash", "train.sh", "--config", str(config), cwd=REPO)
    result = work / "result.txt"
    logs["test"] = run("bash", "test.sh", str(data / "TestSetB"), "--config", str(config),
                       "--result", str(result), cwd=REPO)
    first = result.read_bytes()
    stages = (work / "out" / "stages.txt").read_text()
    # second run without the feature cache: the computation itself is deterministic
    logs["test2"] = run("bash", "test.sh", "--config", str(config), "--result", str(result),
                        "--set", f"cache_dir={work / 'cache2'}", cwd=REPO)
    return dict(work=work, data=data, names=names, seen=seen, dogs=dogs, config=config,
                cfg=cfg, first=first, second=result.read_bytes(), stages=stages,
                logs=logs, counts=counts)


def test_split_is_seeded_and_bad_image_replaced(pipeline):
    lists = pipeline["work"] / "out" / "lists"
    shots = (lists / "train_4shot.txt").read_text().splitlines()
    val = (lists / "val.txt").read_text().splitlines()
    assert len(shots) == 4 * len(pipeline["seen"])
    assert not set(shots) & set(val)
    assert all(" " in l and os.path.isfile(pipeline["data"] / l.rsplit(" ", 1)[0]) for l in shots)
    assert f"{TRAIN_PER_CLASS + 1}.jpg 0" not in "\n".join(shots)      # the corrupt file is never a shot
    # same seed, same list, whatever the output folder
    again = pipeline["work"] / "again"
    run(PY, "process.py", "--root", str(pipeline["data"]), "--out", str(again), "--seed", "3",
        "--val-per-class", "2", cwd=REPO)
    assert (again / "train_4shot.txt").read_text().splitlines() == shots
    other = pipeline["work"] / "other"
    run(PY, "process.py", "--root", str(pipeline["data"]), "--out", str(other), "--seed", "4",
        "--val-per-class", "2", cwd=REPO)
    assert (other / "train_4shot.txt").read_text().splitlines() != shots


def test_result_has_every_image_once_with_five_valid_ids(pipeline):
    check_result_file(pipeline, pipeline["first"])


def check_result_file(pipeline, content):
    """result.txt: every test image once, in natural order, five distinct ids in range."""
    data, names = pipeline["data"], pipeline["names"]
    files = sorted(os.listdir(data / "TestSetB"), key=natural_key)
    lines = content.decode().splitlines()
    assert [l.split(" ")[0] for l in lines] == files       # one line each, in natural order
    for l in lines:
        parts = l.split(" ")
        assert len(parts) == 6 and l == " ".join(parts)
        ids = [int(x) for x in parts[1:]]
        assert len(set(ids)) == 5 and all(0 <= i < len(names) for i in ids)


def test_routing_unseen_only_from_inmap_dogs_only_from_dog_head(pipeline):
    n_seen, dogs = len(pipeline["seen"]), pipeline["dogs"]
    stage = dict(l.split(" ") for l in pipeline["stages"].splitlines())
    result = {l.split(" ")[0]: [int(x) for x in l.split(" ")[1:]]
              for l in pipeline["first"].decode().splitlines()}
    assert set(stage) == set(result)
    decided = {s: [f for f in stage if stage[f] == s] for s in set(stage.values())}
    assert decided.get("unreadable") == [f"image_{len(result)}.jpg"]
    for f, ids in result.items():
        s = stage[f]
        if s == "inmap":
            assert ids[0] >= n_seen
        elif s == "lpp":
            assert ids[0] < dogs[0] and max(ids) < n_seen      # LP++ never names an unseen class
        elif s == "dog":
            assert all(dogs[0] <= i <= dogs[-1] for i in ids)
        if any(i >= n_seen for i in ids):
            assert s in ("inmap", "unreadable"), (f, s, ids)
        if dogs[0] <= ids[0] <= dogs[-1]:
            assert s in ("dog", "unreadable"), (f, s, ids)
    # the corrupt image's line: the cascade's most frequent top-1 classes
    top1 = [ids[0] for f, ids in result.items() if stage[f] != "unreadable"]
    assert result[decided["unreadable"][0]] == fallback_ids(top1, len(pipeline["names"]), 5)
    out = pipeline["logs"]["test"].stdout
    assert "decided by: inmap" in out and "unreadable 1" in out
    assert "unreadable" in pipeline["logs"]["test"].stderr


def test_test_sh_twice_is_byte_identical(pipeline):
    assert pipeline["first"] == pipeline["second"]


def test_test_sh_with_transclip_on_inmap_for_the_unseen_stage(pipeline, tmp_path):
    """stages.unseen = TransCLIP started from InMaP's proxies: the same trained heads,
    a valid result.txt; only InMaP-stage images can name an unseen class."""
    result = tmp_path / "result.txt"
    r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
            "--result", str(result), "--set", 'stages.unseen={"head": "transclip", "init": "inmap"}', cwd=REPO)
    assert "transclip on inmap on 28 images" in r.stdout and "decided by: inmap" in r.stdout
    check_result_file(pipeline, result.read_bytes())
    stage = dict(l.split(" ") for l in (pipeline["work"] / "out" / "stages.txt").read_text().splitlines())
    for line in result.read_text().splitlines():
        name, *ids = line.split(" ")
        if int(ids[0]) >= len(pipeline["seen"]):
            assert stage[name] == "inmap"


def test_train_and_test_sh_with_gda_for_the_seen_stage(pipeline, tmp_path):
    """stages.seen = GDA: train.sh fits and records it (out/gda_<key>.npz), test.sh
    loads it and writes a valid result.txt; the same heads under the default
    stages.seen (LP++) are refused before anything is written."""
    out = tmp_path / "out"
    seen = ["--set", 'stages.seen={"head": "gda"}', "--set", f"out_dir={out}"]
    run("bash", "train.sh", "--config", str(pipeline["config"]), *seen, cwd=REPO)
    m = json.loads((out / "manifest.json").read_text())
    assert m["seen_head"] == {"head": "gda", "init": None, "params": {}}
    assert {"gda_vit", "gda_rn"} <= set(m["outputs"]) and not {"lpp_vit", "lpp_rn"} & set(m["outputs"])
    result = tmp_path / "result.txt"
    run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]), *seen,
        "--result", str(result), cwd=REPO)
    check_result_file(pipeline, result.read_bytes())
    r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
            "--set", f"out_dir={out}", "--result", str(tmp_path / "lpp.txt"), cwd=REPO, ok=False)
    assert r.returncode == 1 and "`stages.seen` differs" in r.stderr and "run train.sh" in r.stderr
    assert not (tmp_path / "lpp.txt").exists()
    # val.sh's report measures the trained seen head: refused too, before any image is encoded
    r = run("bash", "val.sh", "report", "--config", str(pipeline["config"]), "--set", f"out_dir={out}",
            "--out", str(tmp_path / "report"), cwd=REPO, ok=False)
    assert r.returncode == 1 and "`stages.seen` differs" in r.stderr, (r.stdout, r.stderr)
    assert "encode" not in r.stdout and not (tmp_path / "report").exists()


def test_two_ranks_write_the_same_result(pipeline, mpirun, tmp_path):
    """mpirun -np 2 bash test.sh: each rank encodes half of the test images (an
    empty cache, so they do), rank 0 alone runs the heads and writes."""
    result = tmp_path / "result.txt"
    r = run(*mpirun, "bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
            "--result", str(result), "--set", f"cache_dir={tmp_path / 'cache'}", cwd=REPO)
    assert result.read_bytes() == pipeline["first"]
    assert r.stdout.count("decided by:") == 1 and r.stderr.count("unreadable image") == 1
    cache = tmp_path / "cache"
    assert len(list(cache.glob("images-*.npz"))) == 2 and len(list(cache.glob("prompts-*.npz"))) == 2
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_test_sh_takes_features_from_jclip_extract(pipeline, tmp_path):
    """--features vit=DIR: the ViT rows come from jclip.extract's folder (same
    weights, same batch size) instead of encoding; the same result.txt.
    A folder of other weights is refused before anything is written."""
    work = pipeline["work"]
    feats = tmp_path / "vit"
    run(PY, "-m", "jclip.extract", "--model", str(work / "weights" / "vit.pkl"), "--images",
        str(pipeline["data"] / "TestSetB"), "--out", str(feats), "--batch-size", "16", "--shard-size", "16", cwd=REPO)
    result = tmp_path / "result.txt"
    r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
            "--result", str(result), "--features", f"vit={feats}", "--set", f"cache_dir={tmp_path / 'c'}", cwd=REPO)
    assert f"vit: 29 images from {feats}" in r.stdout and "rn: 28 of 29 images encoded" in r.stdout
    assert result.read_bytes() == pipeline["first"]
    r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
            "--result", str(tmp_path / "other.txt"), "--features", f"rn={feats}", cwd=REPO, ok=False)
    assert r.returncode == 1 and "features of other weights than backbone rn" in r.stderr
    assert not (tmp_path / "other.txt").exists()


def test_test_sh_reuses_train_sh_prompts(pipeline):
    """Prompt features are cached per prompt: test.sh encodes only the unseen
    classes' prompts (train.sh encoded the seen ones), and the file is the same
    as with an empty cache (test_test_sh_twice_is_byte_identical)."""
    n_all, n_seen = len(pipeline["names"]), len(pipeline["seen"])
    for key in ("vit", "rn"):
        assert f"{key}: {n_seen * 7} of {n_seen * 7} prompts encoded" in pipeline["logs"]["train"].stdout
        assert f"{key}: {(n_all - n_seen) * 7} of {n_all * 7} prompts encoded" in pipeline["logs"]["test"].stdout
        assert f"{key}: {n_all * 7} of {n_all * 7} prompts encoded" in pipeline["logs"]["test2"].stdout


def test_manifest_records_config_seeds_and_hashes(pipeline):
    import hashlib
    out = pipeline["work"] / "out"
    m = json.loads((out / "manifest.json").read_text())
    shots = out / "lists" / "train_4shot.txt"
    assert m["train_4shot"]["sha256"] == hashlib.sha256(shots.read_bytes()).hexdigest()
    assert m["split"]["seed"] == 3 and m["config"]["lpp"]["seed"] == pipeline["cfg"]["lpp"]["seed"]
    assert m["outputs_relative_to_manifest"] is True
    for key in ("lpp_vit", "lpp_rn", "dog_head"):
        path = out / m["outputs"][key]["path"]        # named relative to out/: a copy uses its own
        assert m["outputs"][key]["path"] == f"{key}.{'safetensors' if key == 'dog_head' else 'npz'}"
        assert m["outputs"][key]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert len(m["backbones"]["dog"]["sha256"]) == 64
    assert len(m["backbones"]["vit"]["source_sha256"]) == 64
    log = pipeline["logs"]["train"].stdout
    assert "LP++ tiny-vit: validation accuracy" in log and "dog head: epoch" in log


def test_budget_counts_the_configured_models(pipeline):
    r = run(PY, "budget.py", "--config", str(pipeline["config"]), cwd=REPO)
    out = r.stdout
    vit, _ = build_reference("tiny-vit")
    rn, _ = build_reference("tiny-rn")
    n_vit = sum(p.numel() for p in vit.parameters())
    n_rn = sum(p.numel() for p in rn.parameters())
    assert f"tiny-vit: {n_vit:,}" in out and f"tiny-rn: {n_rn:,}" in out
    n_all, n_seen, n_dogs = len(pipeline["names"]), len(pipeline["seen"]), len(pipeline["dogs"])
    heads = 2 * (n_all * 32) + 2 * (n_seen * 32 + 2 * n_seen)
    conv = pipeline["counts"]["convnext"] - (1000 * 320 + 1000) + n_dogs * 321
    loaded = n_vit + n_rn + heads + conv
    by_use = 2 * (n_vit + n_rn) + heads + conv
    assert f"{loaded:,}" in out and f"{by_use:,}" in out and "within the limit" in out
    low = run(PY, "budget.py", "--config", str(pipeline["config"]), "--limit", str(loaded - 1),
              cwd=REPO, ok=False)
    assert low.returncode == 1 and "OVER the limit" in low.stdout


# --------------------------------------------------------------------------
# val.sh: the validation report and the sweep
# --------------------------------------------------------------------------

def read_csv(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def validation(pipeline):
    work, dogs = pipeline["work"], pipeline["dogs"]
    # no test image is read: the test folder the configuration names does not exist
    config = ["--config", str(pipeline["config"]), "--set", f"data.test_images={work / 'no-such-folder'}"]
    logs = {}
    for name in ("val_report", "val_report2"):
        logs[name] = run("bash", "val.sh", "report", *config, "--out", str(work / name), cwd=REPO)
    for name in ("val_sweep", "val_sweep2"):
        logs[name] = run(PY, "-m", "jclip.validate", "sweep", *config, "--out", str(work / name),
                         "--write", str(work / f"{name}.json"), cwd=REPO)
    # a planted routing error: the dog range also covers the two classes below the dogs
    logs["planted"] = run("bash", "val.sh", *config, "--out", str(work / "val_planted"),
                          "--set", f"cascade.dog_range=[{dogs[0] - 2},{dogs[-1]}]", cwd=REPO)
    return dict(work=work, logs=logs, **{k: work / k for k in
                                         ("val_report", "val_report2", "val_sweep", "val_sweep2", "val_planted")})


def expected_validation_images(pipeline):
    """val.txt minus the first 2 per class (LP++ / dog-head epoch selection)."""
    lists = pipeline["work"] / "out" / "lists"
    val = [l.rsplit(" ", 1) for l in (lists / "val.txt").read_text().splitlines()]
    seen, out = {}, []
    for path, label in val:
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 2:
            out.append((path, int(label)))
    return out


def test_report_counts_add_up_to_the_validation_list(pipeline, validation):
    s = json.loads((validation["val_report"] / "summary.json").read_text())
    expected = expected_validation_images(pipeline)
    assert s["images"] + len(s["unreadable"]) == len(expected) > 0
    assert set(s["unreadable"]) <= {p for p, _ in expected}
    for setup in ("trained", "simulated"):
        r = s[setup]
        assert r["overall"]["n"] == s["images"]
        assert sum(map(sum, r["routing"]["counts"])) == s["images"]
        for table in ("per_domain", "per_stage", "per_group"):
            assert sum(a["n"] for a in r[table].values()) == s["images"], (setup, table)
    # accuracies recomputed from the per-image predictions
    preds = read_csv(validation["val_report"] / "predictions.csv")
    labels = dict(expected)
    for setup in ("trained", "simulated"):
        rows = [p for p in preds if p["setup"] == setup]
        assert sorted(p["path"] for p in rows) == sorted(p for p, _ in expected if p not in s["unreadable"])
        top1 = np.mean([int(p["top5"].split()[0]) == labels[p["path"]] for p in rows])
        top5 = np.mean([labels[p["path"]] in map(int, p["top5"].split()) for p in rows])
        assert s[setup]["overall"]["top1"] == pytest.approx(top1, abs=1e-6)
        assert s[setup]["overall"]["top5"] == pytest.approx(top5, abs=1e-6)
        for stage, col in (("inmap", 0), ("lpp", 1), ("dog", 2)):
            routed = sum(int(p["stage"] == stage) for p in rows)
            assert routed == sum(row[col] for row in s[setup]["routing"]["counts"])
    # simulated: held-out classes are non-dog seen classes; InMaP answers only with them
    held = {pipeline["seen"].index(n) for n in s["held_out_classes"]}
    assert len(held) == 3 and not held & set(pipeline["dogs"])
    for p in preds:
        if p["setup"] == "simulated":
            top1 = int(p["top5"].split()[0])
            assert (p["stage"] == "inmap") == (top1 in held) or p["stage"] == "dog", p
    per_class = read_csv(validation["val_report"] / "per_class.csv")
    assert sum(int(r["n"]) for r in per_class if r["setup"] == "trained") == s["images"]
    # the shots' features come from train.sh's cache: one new cache file per backbone
    cache = pipeline["work"] / "cache"
    for model in ("tiny-vit", "tiny-rn"):
        assert len(list(cache.glob(f"images-{model}-*.npz"))) == 3      # train, test, validation
    md = (validation["val_report"] / "report.md").read_text()
    assert f"{s['images']} held-out images" in md and "## Routing" in md and not s["warnings"]


def test_report_and_sweep_plots_are_valid_pngs(validation):
    from PIL import Image
    for folder, expected in ((validation["val_report"], {"accuracy_per_domain.png", "routing.png", "mixing_weight.png"}),
                             (validation["val_sweep"], {"mixing_weight.png", "templates.png", "inmap.png"})):
        pngs = {f for f in os.listdir(folder) if f.endswith(".png")}
        assert pngs == expected
        md = next(folder.glob("*.md")).read_text()
        for f in pngs:
            assert f"]({f})" in md
            with open(folder / f, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
            with Image.open(folder / f) as im:
                im.verify()
            assert (folder / (f[:-4] + ".svg")).is_file()          # the SVG beside each PNG
        assert not [f for f in os.listdir(folder) if f.startswith(".tmp-")]


def test_same_seed_reproduces_every_number(validation):
    for a, b in (("val_report", "val_report2"), ("val_sweep", "val_sweep2")):
        files = sorted(f for f in os.listdir(validation[a]) if f != "timings.json")
        assert files == sorted(f for f in os.listdir(validation[b]) if f != "timings.json")
        for f in files:
            if f.endswith((".json", ".csv", ".md")) and f != "sweep.json" and f != "sweep.md":
                assert (validation[a] / f).read_bytes() == (validation[b] / f).read_bytes(), f
    # the sweep's files differ only in the output path they name
    one = json.loads((validation["val_sweep"] / "sweep.json").read_text())
    two = json.loads((validation["val_sweep2"] / "sweep.json").read_text())
    assert {k: v for k, v in one.items() if k != "written"} == {k: v for k, v in two.items() if k != "written"}
    assert (validation["work"] / "val_sweep.json").read_bytes() == (validation["work"] / "val_sweep2.json").read_bytes()


def test_two_ranks_train_the_same_heads_and_report_the_same_numbers(pipeline, validation, mpirun, tmp_path):
    """mpirun -np 2 bash train.sh / val.sh: the same head files and report as one process."""
    import hashlib
    work = pipeline["work"]
    out = tmp_path / "out"
    common = ["--config", str(pipeline["config"]), "--set", f"cache_dir={tmp_path / 'cache'}"]
    r = run(*mpirun, "bash", "train.sh", *common, "--set", f"out_dir={out}", cwd=REPO)
    assert r.stdout.count("trained in") == 1
    for f in ("lpp_vit.npz", "lpp_rn.npz", "dog_head.safetensors", "val_dogs.txt"):
        assert hashlib.sha256((out / f).read_bytes()).digest() == \
            hashlib.sha256((work / "out" / f).read_bytes()).digest(), f
    report = tmp_path / "report"
    run(*mpirun, "bash", "val.sh", "report", *common, "--set", f"data.test_images={work / 'no-such-folder'}",
        "--out", str(report), cwd=REPO)
    for f in ("summary.json", "predictions.csv", "per_class.csv", "report.md"):
        assert (report / f).read_bytes() == (validation["val_report"] / f).read_bytes(), f


def test_sweep_writes_the_best_setting_it_tried(pipeline, validation):
    from jclip.pipeline.config import load_config
    s = json.loads((validation["val_sweep"] / "sweep.json").read_text())
    trials = read_csv(validation["val_sweep"] / "trials.csv")
    assert len(trials) == s["trials"] > 10
    best = max(float(t["top1"]) for t in trials)
    assert s["chosen_top1"] == pytest.approx(best, abs=1e-9) and s["chosen_top1"] >= s["baseline_top1"]
    chosen = {k: str(v) for k, v in s["chosen"].items()}
    assert any(all(t[k] == v for k, v in chosen.items()) and float(t["top1"]) == best for t in trials)
    # every candidate of the grid was tried
    grid = pipeline["cfg"]["sweep"]
    assert {t["templates"] for t in trials} == set(grid["templates"])
    assert {int(t["iters"]) for t in trials if t["step"] == "inmap"} == set(grid["inmap_iters"])
    tuned_path = validation["work"] / "val_sweep.json"
    tuned = load_config(str(tuned_path))
    assert tuned.templates == s["chosen"]["templates"]
    assert tuned.lpp.epochs == s["chosen"]["lpp_epochs"]
    assert (tuned.inmap.tau_t, tuned.inmap.iters) == (s["chosen"]["tau_t"], s["chosen"]["iters"])
    assert list(tuned.cascade.lpp_mix.values())[0] == s["chosen"]["lpp_mix_w"]
    assert tuned.to_dict()["_tuned"]["top1"] == s["chosen_top1"]
    # test.sh takes it; heads trained with other templates or epochs are refused
    r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(tuned_path),
            "--result", str(validation["work"] / "tuned.txt"), cwd=REPO, ok=not s["retrain_needed"])
    if s["retrain_needed"]:
        assert r.returncode != 0 and "run train.sh" in r.stderr
    else:
        assert (validation["work"] / "tuned.txt").is_file()


def test_planted_routing_error_shows_in_the_report(pipeline, validation):
    dogs = pipeline["dogs"]
    good = json.loads((validation["val_report"] / "summary.json").read_text())
    bad = json.loads((validation["val_planted"] / "summary.json").read_text())
    assert any("outside Thu-dog" in w for w in bad["warnings"])
    assert "## Warnings" in (validation["val_planted"] / "report.md").read_text()
    assert "warning: cascade.dog_range" in validation["logs"]["planted"].stderr
    # expected: every image LP++ gave to one of the two planted classes now goes to the dog head
    planted = {dogs[0] - 2, dogs[0] - 1}
    preds = [p for p in read_csv(validation["val_report"] / "predictions.csv") if p["setup"] == "trained"]
    moved = sum(p["stage"] == "lpp" and int(p["top5"].split()[0]) in planted for p in preds)
    assert moved > 0
    g, b = good["trained"]["routing"], bad["trained"]["routing"]
    assert b["rows"] == ["not-dog", "dog"] and b["cols"] == ["InMaP", "LP++", "dog head"]
    assert b["counts"][0][2] == g["counts"][0][2] + moved          # not-dog images sent to the dog head
    assert b["counts"][0][1] == g["counts"][0][1] - moved
    assert b["counts"][1] == g["counts"][1]                          # the dog row is unchanged
    assert bad["trained"]["per_stage"]["dog head"]["top1"] < good["trained"]["per_stage"]["dog head"]["top1"] or \
        good["trained"]["per_stage"]["dog head"]["top1"] == 0
    assert any("not-dog images went to the dog head" in e and not e.startswith("0 ")
               for e in bad["routing_errors"]["trained"])


def test_val_sh_refuses_what_the_heads_were_not_trained_with(pipeline, tmp_path):
    config = str(pipeline["config"])
    r = run("bash", "val.sh", "--config", config, "--out", str(tmp_path / "r"), "--set", "lpp.epochs=7",
            cwd=REPO, ok=False)
    assert r.returncode == 1 and "`lpp` differs" in r.stderr and "run train.sh" in r.stderr
    other = tmp_path / "lists"
    run(PY, "process.py", "--root", str(pipeline["data"]), "--out", str(other), "--seed", "4", cwd=REPO)
    r = run("bash", "val.sh", "sweep", "--config", config, "--out", str(tmp_path / "s"),
            "--set", f"data.lists={other}", cwd=REPO, ok=False)
    assert r.returncode == 1 and "not the 4-shot list" in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_test_sh_refuses_a_head_replaced_after_training(pipeline, tmp_path):
    """What a train.sh killed between two head writes leaves: a new head beside
    the manifest of the previous run.  test.sh must refuse it, not use it."""
    head = pipeline["work"] / "out" / "lpp_rn.npz"
    original = head.read_bytes()
    result = tmp_path / "result.txt"
    try:
        # a valid LP++ head file, but not the one the manifest records
        head.write_bytes((pipeline["work"] / "out" / "lpp_vit.npz").read_bytes())
        r = run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), "--config", str(pipeline["config"]),
                "--result", str(result), cwd=REPO, ok=False)
    finally:
        head.write_bytes(original)
    assert r.returncode == 1, r.stderr
    assert "lpp_rn.npz" in r.stderr and "run train.sh again" in r.stderr
    assert not result.exists()


KILL_WHEN_STAGED = """
import glob, os, signal, subprocess, sys, time
pattern, cmd = sys.argv[1], sys.argv[2:]
p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while p.poll() is None:
    if glob.glob(pattern):
        os.killpg(p.pid, signal.SIGKILL)     # the first new head is written, the others are not yet
        p.wait()
        print("killed")
        break
    time.sleep(0.02)
"""


def test_train_sh_killed_between_two_head_writes_leaves_the_previous_heads_usable(pipeline, tmp_path):
    """A real kill: train.sh into its own folder, then again, SIGKILLed as soon as
    it has written its first new head.  The new heads are built in a staging
    folder beside the old ones: test.sh gives the previous run's result."""
    out = tmp_path / "out"
    setting = ["--config", str(pipeline["config"]), "--set", f"out_dir={out}"]
    run("bash", "train.sh", *setting, cwd=REPO)
    assert (out / "lpp_rn.npz").is_file() and (out / "manifest.json").is_file()
    before = (out / "manifest.json").read_bytes()
    # the killer is a separate process: pytest's own process (with Jittor loaded)
    # quits when one of its children dies of a signal
    k = subprocess.run([PY, "-c", KILL_WHEN_STAGED, str(out / ".train-*" / "lpp_rn.npz"), "bash", "train.sh",
                        *setting], cwd=REPO, env=dict(os.environ, log_silent="1", PYTHON=PY),
                       capture_output=True, text=True, timeout=600)
    assert k.stdout.strip() == "killed", (k.stdout, k.stderr)
    assert (out / "manifest.json").read_bytes() == before
    result = tmp_path / "result.txt"
    run("bash", "test.sh", str(pipeline["data"] / "TestSetB"), *setting, "--result", str(result), cwd=REPO)
    assert result.read_bytes() == pipeline["first"]


# SHA-256 of the outputs of this miniature run made before the layout was
# rebuilt (commit b136045, jclip/cascade.py and jclip/validate.py): the
# redesign must not change a byte of them
BASELINE_SHA256 = {
    "result": "4a2e051deb4d7a5dbbdb93b6a05cbf334ea823d3c5350b4b0940db0a884b1a59",
    "summary": "d93360aeeab488b06d6c159443f7dcb93f8186d7a5b59fbcfd331c4895736ef0",
    "tuned": "96410b8cedaf83292612ea691600c35d025bf83317f8c123e2def1f6876a4c9e",
}


def _normalised_sha256(path, work):
    """SHA-256 of a pipeline output with the run's temporary folder replaced by a
    fixed name (the files name their configuration and data paths)."""
    import hashlib
    text = open(path, "rb").read().decode().replace(str(work), "WORK")
    return hashlib.sha256(text.encode()).hexdigest()


def test_outputs_are_byte_identical_to_the_baseline(pipeline, validation):
    import hashlib
    work = pipeline["work"]
    got = {"result": hashlib.sha256(pipeline["first"]).hexdigest(),
           "summary": _normalised_sha256(validation["val_report"] / "summary.json", work),
           "tuned": _normalised_sha256(work / "val_sweep.json", work)}
    assert got == BASELINE_SHA256
