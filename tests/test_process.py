"""process.py: the validation images are decoded too; a bad one is replaced by the
class's next image (as a bad shot is) and listed in split.json."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from jclip.data.contest import seeded_split
from jclip.data.lists import read_labelled_list

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["Animal_Bear", "Animal_Bee", "Food-101_pizza"]
PER_CLASS = 9


def make_root(tmp_path):
    root = tmp_path / "Dataset"
    rng = np.random.default_rng(0)
    lines = []
    for y, name in enumerate(CLASSES):
        domain, folder = name.split("_", 1)
        d = root / "TrainSet" / domain / folder
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
            lines.append((f"TrainSet/{domain}/{folder}/{i}.jpg", y))
    (root / "classes.txt").write_text("\n".join(f"{c} {i}" for i, c in enumerate(CLASSES)))
    (root / "train.txt").write_text("".join(f"{p} {y}\n" for p, y in lines))
    return root, lines


def process(root, out, *args):
    r = subprocess.run([sys.executable, "process.py", "--root", str(root), "--out", str(out),
                        "--seed", "5", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, JCLIP_PROGRESS="0"))
    assert "Traceback" not in r.stderr, r.stderr
    return r


def reference_order(lines, shots=4, seed=5):
    """Shots and every remaining image per class, in the split's order (all images good)."""
    by_class = {}
    for p, y in lines:
        by_class.setdefault(y, []).append(p)
    picked, rest, _ = seeded_split(by_class, shots, seed, 10 ** 6, lambda p: None, log=lambda m: None)
    order = {}
    for p, y in rest:
        order.setdefault(y, []).append(p)
    return picked, order


def test_clean_split_is_unchanged(tmp_path):
    root, lines = make_root(tmp_path)
    r = process(root, tmp_path / "l", "--val-per-class", 3)
    assert r.returncode == 0, r.stderr
    by_class = {}
    for p, y in lines:
        by_class.setdefault(y, []).append(p)
    # the previous behaviour: seeded_split's own validation list
    picked, val, _ = seeded_split(by_class, 4, 5, 3, lambda p: None, log=lambda m: None)
    assert read_labelled_list(str(tmp_path / "l" / "train_4shot.txt")) == picked
    assert read_labelled_list(str(tmp_path / "l" / "val.txt")) == val
    info = json.loads((tmp_path / "l" / "split.json").read_text())
    assert info["val_replaced"] == [] and info["val_short"] == [] and info["num_val"] == 9


def test_bad_validation_images_are_replaced_and_listed(tmp_path):
    root, lines = make_root(tmp_path)
    picked, order = reference_order(lines)
    corrupt, missing = order[0][0], order[1][1]            # both would be in val.txt
    (root / corrupt).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    os.remove(root / missing)
    # class 2 runs out: all its remaining images but one are bad
    for p in order[2][1:]:
        (root / p).write_bytes(b"broken")
    r = process(root, tmp_path / "l", "--val-per-class", 3)
    assert r.returncode == 0, r.stderr
    val = read_labelled_list(str(tmp_path / "l" / "val.txt"))
    assert read_labelled_list(str(tmp_path / "l" / "train_4shot.txt")) == picked   # shots untouched
    expect = [(p, 0) for p in order[0][1:4]] + [(p, 1) for p in [order[1][0]] + order[1][2:4]] \
        + [(order[2][0], 2)]
    assert val == expect
    info = json.loads((tmp_path / "l" / "split.json").read_text())
    bad = {(e["path"], e["label"]) for e in info["val_replaced"]}
    assert bad == {(corrupt, 0), (missing, 1)} | {(p, 2) for p in order[2][1:]}
    assert {e["path"]: e["error"] for e in info["val_replaced"]}[missing] == "file not found"
    assert "cannot read image" in {e["path"]: e["error"] for e in info["val_replaced"]}[corrupt]
    assert info["val_short"] == [2] and info["num_val"] == len(val) == 7
    # one warning line per bad image
    warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
    assert len(warnings) == len(bad) and all(any(p in w for w in warnings) for p, _ in bad)
    assert f"0 shots and {len(bad)} validation images replaced" in r.stdout


def test_bad_shot_still_replaced_and_kept_out_of_validation(tmp_path):
    root, lines = make_root(tmp_path)
    picked, order = reference_order(lines)
    bad_shot = picked[0][0]
    (root / bad_shot).write_bytes(b"broken")
    r = process(root, tmp_path / "l", "--val-per-class", 2)
    assert r.returncode == 0, r.stderr
    shots = read_labelled_list(str(tmp_path / "l" / "train_4shot.txt"))
    val = read_labelled_list(str(tmp_path / "l" / "val.txt"))
    assert bad_shot not in {p for p, _ in shots + val}
    assert not {p for p, _ in shots} & {p for p, _ in val}
    info = json.loads((tmp_path / "l" / "split.json").read_text())
    assert [e["path"] for e in info["replaced"]] == [bad_shot] and info["val_replaced"] == []
