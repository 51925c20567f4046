"""Contest formats, the seeded split, process.py's errors, routing, result writing, budget counts."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jclip.pipeline import budget
from jclip.pipeline.cascade import class_masks, fallback_ids, load_config, route, write_result
from jclip.data.lists import ListFormatError, read_classes, read_labelled_list
from jclip.data.contest import ContestFormatError, check_result, domain_ranges, format_result, group_list, list_test_images, natural_key, scan_trainset, seeded_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "..", "shared", "data", "jittor4")


def test_real_class_lists_and_domains():
    names = read_classes(os.path.join(REAL, "classes.txt"))
    b = read_classes(os.path.join(REAL, "classes_b.txt"))
    assert len(names) == 374 and b[:374] == names and len(b) == 403
    assert domain_ranges(b) == {"Animal": (0, 51), "Caltech-101": (52, 142), "Food-101": (143, 243),
                                "Thu-dog": (244, 373), "Stanford-Cars": (374, 402)}
    shots = read_labelled_list(os.path.join(REAL, "train_label.txt"), len(names))
    assert len(shots) == 1496
    by_class = group_list(shots, names, "train_label.txt")     # folders agree with labels
    assert sorted(by_class) == list(range(374)) and all(len(v) == 4 for v in by_class.values())


@pytest.mark.parametrize("text, msg", [
    ("A_a 0\nA_b 2", r"missing \[1\]"), ("A_a 0\nA_b 0", "id 0 given twice"),
    ("A_a 0\nA_a 1", "names given twice"), ("A_a zero", "expected"), ("", "no classes")])
def test_bad_class_lists(tmp_path, text, msg):
    p = tmp_path / "classes.txt"
    p.write_text(text)
    with pytest.raises(ListFormatError, match=msg):
        read_classes(str(p))


def test_list_errors_name_file_and_line(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("TrainSet/A/a/1.jpg 0\nTrainSet/A/a/2.jpg 7\n")
    with pytest.raises(ListFormatError, match=r"l.txt:2: label 7 out of range 0..1"):
        read_labelled_list(str(p), 2)
    with pytest.raises(ContestFormatError, match="lies in the folder of 'A_a'"):
        group_list([("TrainSet/A/a/1.jpg", 1)], ["A_a", "A_b"], "l.txt")


def _pool(n_classes=3, n=10):
    return {y: [f"TrainSet/D/c{y}/{i}.jpg" for i in range(n)] for y in range(n_classes)}


def test_split_is_a_function_of_seed_and_sorted_paths():
    ok = lambda p: None  # noqa: E731
    a = seeded_split(_pool(), 4, 7, 3, ok)
    shuffled = {y: list(reversed(v)) for y, v in _pool().items()}    # listing order must not matter
    b = seeded_split(shuffled, 4, 7, 3, ok)
    assert a[:2] == b[:2]
    c = seeded_split(_pool(), 4, 8, 3, ok)
    assert a[0] != c[0]
    picked, val, _ = a
    assert len(picked) == 12 and len(val) == 9 and not set(picked) & set(val)
    # pinned: numpy's default_rng(7) is stable across platforms and versions
    assert [p for p, y in picked if y == 0] == [f"TrainSet/D/c0/{i}.jpg" for i in
                                                 np.random.default_rng(7).permutation(10)[:4]]


def test_split_replaces_bad_images_and_keeps_user_shots():
    bad = {"TrainSet/D/c0/3.jpg"}
    usable = lambda p: "cannot decode" if p in bad else None  # noqa: E731
    fixed = {0: ["TrainSet/D/c0/3.jpg", "TrainSet/D/c0/1.jpg", "TrainSet/D/c0/2.jpg",
                 "TrainSet/D/c0/4.jpg"]}
    logs = []
    picked, val, report = seeded_split(_pool(), 4, 1, 5, usable, fixed, log=logs.append)
    c0 = [p for p, y in picked if y == 0]
    assert c0[:3] == ["TrainSet/D/c0/1.jpg", "TrainSet/D/c0/2.jpg", "TrainSet/D/c0/4.jpg"]
    assert len(c0) == 4 and "TrainSet/D/c0/3.jpg" not in c0
    assert report["replaced"][0]["path"] == "TrainSet/D/c0/3.jpg" and "replaced" in logs[0]
    assert not {p for p, _ in val} & set(fixed[0])
    with pytest.raises(ContestFormatError, match="no usable training image"):
        seeded_split(_pool(1, 2), 4, 1, 0, lambda p: "bad", log=lambda m: None)


def _tiny_root(tmp_path):
    root = tmp_path / "Dataset"
    for d, c in (("Animal", "Bear"), ("Animal", "Bee"), ("Thu-dog", "pug")):
        (root / "TrainSet" / d / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "TrainSet" / d / c / f"{i}.jpg")
    (root / "classes.txt").write_text("Animal_Bear 0\nAnimal_Bee 1\nThu-dog_pug 2")
    return root


def _process(*args):
    return subprocess.run([sys.executable, "process.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_process_from_folders_and_clear_errors(tmp_path):
    root = _tiny_root(tmp_path)
    assert scan_trainset(str(root), read_classes(str(root / "classes.txt")))[2][0] == "TrainSet/Thu-dog/pug/0.jpg"
    (root / "TrainSet" / "Animal" / "Bee" / "0.jpg").write_bytes(b"broken")
    r = _process("--root", root, "--out", tmp_path / "l", "--val-per-class", "1", "--seed", "0")
    assert r.returncode == 0, r.stderr
    shots = (tmp_path / "l" / "train_4shot.txt").read_text().splitlines()
    assert len(shots) == 12 and "TrainSet/Animal/Bee/0.jpg 1" not in shots
    assert "no train.txt" in r.stdout
    r = _process("--root", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.returncode != 0 and "dataset root not found" in r.stderr
    (root / "TrainSet" / "Animal" / "Cat").mkdir()
    r = _process("--root", root, "--out", tmp_path / "x")
    assert r.returncode != 0 and "'Animal_Cat' is not in the class list" in r.stderr
    os.rmdir(root / "TrainSet" / "Animal" / "Cat")
    (root / "train.txt").write_text("TrainSet/Animal/Bear/1.jpg 5\n")
    r = _process("--root", root, "--out", tmp_path / "x")
    assert r.returncode != 0 and "label 5 out of range 0..2" in r.stderr


def test_natural_order_and_result_validation(tmp_path):
    folder = tmp_path / "TestSetB"
    folder.mkdir()
    for n in (10, 2, 1):
        (folder / f"image_{n}.{'png' if n == 2 else 'jpg'}").write_bytes(b"x")
    assert list_test_images(str(folder)) == ["image_1.jpg", "image_2.png", "image_10.jpg"]
    assert sorted(["image_10.jpg", "image_9.png"], key=natural_key) == ["image_9.png", "image_10.jpg"]
    rows = [("image_10.jpg", [5, 4, 3, 2, 1]), ("image_1.jpg", [0, 1, 2, 3, 4]),
            ("image_2.png", [9, 8, 7, 6, 5])]
    out = tmp_path / "result.txt"
    write_result(str(out), rows, str(folder), 10, 5)
    assert out.read_text() == "image_1.jpg 0 1 2 3 4\nimage_2.png 9 8 7 6 5\nimage_10.jpg 5 4 3 2 1\n"
    assert check_result(str(out), str(folder), 10)["image_2.png"][0] == 9
    with pytest.raises(ValueError, match="5 distinct"):
        format_result([("image_1.jpg", [1, 1, 2, 3, 4])], 10)
    with pytest.raises(ValueError, match="outside"):
        format_result([("image_1.jpg", [1, 2, 3, 4, 10])], 10)
    before = out.read_text()
    with pytest.raises(ValueError, match="missing"):       # a line short: nothing replaced
        write_result(str(out), rows[:2], str(folder), 10, 5)
    assert out.read_text() == before and sorted(os.listdir(tmp_path)) == ["TestSetB", "result.txt"]


def test_routing_rules():
    C, unseen, dogs = 12, 9, (5, 8)
    inmap = np.zeros((3, C))
    lpp = np.zeros((3, unseen))
    inmap[0, 10] = 5          # unseen top-1 -> InMaP
    inmap[1, 2] = inmap[2, 2] = 5
    lpp[1, 1] = 5             # not a dog -> LP++
    lpp[2, 6] = 5             # dog -> dog head
    ids, stage = route(inmap, lpp, *class_masks(C, unseen, unseen, dogs), 5)
    assert list(stage) == ["inmap", "lpp", "dog"]
    assert ids[0, 0] == 10 and ids[1, 0] == 1 and max(ids[1]) < unseen


def test_fallback_is_the_most_frequent_top1():
    assert fallback_ids([3, 3, 7, 7, 1, 9, 9, 9], 12, 5) == [9, 3, 7, 1, 0]
    assert fallback_ids([], 6, 5) == [0, 1, 2, 3, 4]


def test_budget_default_config_matches_spec():
    cfg = load_config(None, ["data.root=/nonexistent"])     # counted without weights or data
    rows, stages, notes = budget.components(cfg)
    params = dict(rows)
    assert params["ViT-B/32 image tower"] == 87_849_216 and params["ViT-B/32 text tower"] == 63_428_097
    assert params["RN101 image tower"] + params["RN101 text tower"] == 119_688_033
    assert any("convnextv2_base: 88,717,800" in n for n in notes)
    loaded, by_use = budget.totals(rows, stages)
    clip = 151_277_313 + 119_688_033
    conv = 88_717_800 - 1_025_000 + 130 * 1025
    heads = 2 * 403 * 512 + 2 * (374 * 512 + 2 * 374)
    assert loaded == clip + conv + heads
    assert by_use == 2 * clip + conv + heads
    for name, n in (("RN50", 102_007_137), ("ViT-B/16", 149_620_737)):
        assert budget.count(budget.clip_shapes(name)) == n


def test_config_overrides_are_checked():
    cfg = load_config(None, ["lpp.epochs=7", "cascade.lpp_mix={\"vit\": 1.0}"])
    assert cfg["lpp"]["epochs"] == 7 and cfg["cascade"]["lpp_mix"] == {"vit": 1.0}
    with pytest.raises(ContestFormatError, match="no such setting"):
        load_config(None, ["lpp.epoch=7"])
    with pytest.raises(ContestFormatError, match="unknown backbones"):
        load_config(None, ["cascade.inmap_mix={\"vit\": 0.5, \"b16\": 0.5}"])
