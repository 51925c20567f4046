"""End to end, as a user runs it: process.py, convert.py, train.sh, test.sh, budget.py.

A miniature contest dataset in the exact layout, with real class names from
../shared/data/jittor4 (every domain, unseen cars in classes_b.txt only),
mixed .jpg/.jpeg/.png, a corrupt file, a grayscale and a CMYK image; tiny
random checkpoints in the original torch formats (OpenAI-style fp16
TorchScript CLIPs, an official-named ConvNeXt-V2 {'model': sd}).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from reference import build_reference  # noqa: E402
from jclip.cascade import fallback_ids  # noqa: E402
from jclip.contest import natural_key, read_classes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "..", "shared", "data", "jittor4")
PY = sys.executable
# classes per domain in the miniature: dogs >= 5 so the dog head has a top-5
PER_DOMAIN = {"Animal": 2, "Caltech-101": 2, "Food-101": 2, "Thu-dog": 5, "Stanford-Cars": 3}
TRAIN_PER_CLASS = 7


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
    from jclip.checkpoint import prepare_state_dict
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
    cfg = json.load(open(os.path.join(REPO, "configs", "cascade.json")))
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
    config = work / "cascade.json"
    config.write_text(json.dumps(cfg, indent=1))
    logs = {}
    logs["process"] = run(PY, "process.py", "--root", str(data), "--out", cfg["data"]["lists"],
                          "--seed", "3", "--val-per-class", "2", cwd=REPO)
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
    data, names = pipeline["data"], pipeline["names"]
    files = sorted(os.listdir(data / "TestSetB"), key=natural_key)
    lines = pipeline["first"].decode().splitlines()
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


def test_manifest_records_config_seeds_and_hashes(pipeline):
    import hashlib
    out = pipeline["work"] / "out"
    m = json.loads((out / "manifest.json").read_text())
    shots = out / "lists" / "train_4shot.txt"
    assert m["train_4shot"]["sha256"] == hashlib.sha256(shots.read_bytes()).hexdigest()
    assert m["split"]["seed"] == 3 and m["config"]["lpp"]["seed"] == pipeline["cfg"]["lpp"]["seed"]
    for key in ("lpp_vit", "lpp_rn", "dog_head"):
        path = m["outputs"][key]["path"]
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
