"""Contest formats: class and `path label` lists (BOM, CRLF), the TrainSet scan,
the seeded split, process.py's errors, test folders and result.txt.
(Routing, result writing and the budget are tested in test_cascade.py / test_budget.py.)"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jclip.io import atomic_write_text
from jclip.data.lists import ListFormatError, read_classes, read_labelled_list, write_classes, write_labelled_list
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


def _write(path, lines, bom=False, newline="\n"):
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))
    return str(path)


@pytest.mark.parametrize("bom, newline", [(True, "\n"), (False, "\r\n"), (True, "\r\n")])
def test_class_and_path_lists_accept_bom_and_crlf(tmp_path, bom, newline):
    """A classes.txt saved by a Windows editor (BOM, CRLF) reads like the plain
    file; before, the BOM became part of the first name and the folder check
    said "labelled 0 (Animal_Bear) but lies in the folder of 'Animal_Bear'"."""
    classes = ["Animal_Bear 0", "Animal_Bee 1", "Thu-dog_Shiba Inu 2"]
    items = ["TrainSet/Animal/Bear/1.jpg 0", "TrainSet/Thu-dog/Shiba Inu/a b.jpg 2", "\tTrainSet/Animal/Bee/3.jpg\t1 "]
    names = read_classes(_write(tmp_path / "classes.txt", classes, bom, newline))
    assert names == read_classes(_write(tmp_path / "plain.txt", classes)) == ["Animal_Bear", "Animal_Bee", "Thu-dog_Shiba Inu"]
    listed = read_labelled_list(_write(tmp_path / "train.txt", items, bom, newline), len(names))
    assert listed == [("TrainSet/Animal/Bear/1.jpg", 0), ("TrainSet/Thu-dog/Shiba Inu/a b.jpg", 2),
                      ("TrainSet/Animal/Bee/3.jpg", 1)]
    assert group_list(listed, names, "train.txt")[0] == ["TrainSet/Animal/Bear/1.jpg"]


def test_lists_round_trip_and_reject_what_would_not_read_back(tmp_path):
    items = [("TrainSet/A/a b/1.jpg", 0), ("x.png", np.int64(3))]
    write_labelled_list(str(tmp_path / "l.txt"), items)
    assert (tmp_path / "l.txt").read_bytes() == b"TrainSet/A/a b/1.jpg 0\nx.png 3\n"
    assert read_labelled_list(str(tmp_path / "l.txt")) == [("TrainSet/A/a b/1.jpg", 0), ("x.png", 3)]
    write_classes(str(tmp_path / "c.txt"), ["A_a", "A_b c"])
    assert read_classes(str(tmp_path / "c.txt")) == ["A_a", "A_b c"]
    with pytest.raises(ListFormatError, match="cannot write path ' x.png'"):
        write_labelled_list(str(tmp_path / "bad.txt"), [(" x.png", 1)])
    assert not (tmp_path / "bad.txt").exists()
    named = tmp_path / "named.txt"
    named.write_text("# comment\ncat/1.jpg cat\n\ndog/2.jpg dog\n")
    assert read_labelled_list(str(named), numeric=False) == [("cat/1.jpg", "cat"), ("dog/2.jpg", "dog")]
    with pytest.raises(ListFormatError, match=r"named.txt:2: expected 'path label' with an integer label"):
        read_labelled_list(str(named))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9.jpg 1\n".encode("latin-1"))
    with pytest.raises(ListFormatError, match=r"latin1.txt: list is not UTF-8 text \(byte 3"):
        read_labelled_list(str(tmp_path / "latin1.txt"))
    with pytest.raises(ListFormatError, match="gone.txt: class list not found"):
        read_classes(str(tmp_path / "gone.txt"))


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
    r = subprocess.run([sys.executable, "process.py", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True)
    assert "Traceback" not in r.stderr, r.stderr      # bad input: one clear line, no traceback
    return r


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
    atomic_write_text(str(out), format_result(rows, 10))
    assert out.read_text() == "image_1.jpg 0 1 2 3 4\nimage_2.png 9 8 7 6 5\nimage_10.jpg 5 4 3 2 1\n"
    assert check_result(str(out), str(folder), 10)["image_2.png"][0] == 9
    crlf = tmp_path / "crlf" / "result.txt"
    crlf.parent.mkdir()
    crlf.write_bytes(b"\xef\xbb\xbf" + out.read_bytes().replace(b"\n", b"\r\n"))
    assert check_result(str(crlf), str(folder), 10) == check_result(str(out), str(folder), 10)
    with pytest.raises(ValueError, match="5 distinct"):
        format_result([("image_1.jpg", [1, 1, 2, 3, 4])], 10)
    with pytest.raises(ValueError, match="outside"):
        format_result([("image_1.jpg", [1, 2, 3, 4, 10])], 10)
    (tmp_path / "short.txt").write_text(format_result(rows[:2], 10))
    with pytest.raises(ValueError, match=r"missing \['image_2.png'\]"):
        check_result(str(tmp_path / "short.txt"), str(folder), 10)
    (tmp_path / "dup.txt").write_text(out.read_text() + "image_1.jpg 0 1 2 3 4\n")
    with pytest.raises(ValueError, match="dup.txt:4: image_1.jpg given twice"):
        check_result(str(tmp_path / "dup.txt"), str(folder), 10)
