"""The contest's layout: the TrainSet scan, the seeded split, test folders, result.txt.

Layout (SPEC section 1): ``<root>/TrainSet/<Domain>/<Class>/<n>.jpg``,
``classes.txt`` lines ``<Domain>_<Class> <id>``, the official ``train.txt``
lines ``TrainSet/<Domain>/<Class>/<n>.jpg <label>``, flat test folders of
``image_<n>.<ext>``.  The class and ``path label`` lists are read and
written by ``jclip.data.lists``.  Every reader names the file and line it
rejects.

The 4-shot split is a pure function of (the sorted image paths of each class,
the seed): numpy's ``default_rng(seed)`` draws per class in class-id order, so
the same seed gives the same list on any machine and file system.
"""
import os
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .images import IMAGE_EXTS
from .lists import ListFormatError, read_lines
# the list readers used to live here; callers that still import them from here keep working
from .lists import read_classes, read_labelled_list, write_labelled_list  # noqa: F401

TRAIN_DIR = "TrainSet"


# A contest file or folder that does not have the expected format: the same
# type as a bad list, so callers catching either name catch both.
ContestFormatError = ListFormatError


def domain_of(class_name: str) -> str:
    """'Thu-dog_Shiba_Dog' -> 'Thu-dog' (domains never contain '_')."""
    return class_name.split("_", 1)[0]


def domain_ranges(names: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """{domain: (first id, last id)} for a class list whose domains are contiguous."""
    ranges = {}
    for i, name in enumerate(names):
        d = domain_of(name)
        if d in ranges and ranges[d][1] != i - 1:
            raise ContestFormatError(f"domain {d!r} is not a contiguous id range (id {i})")
        ranges[d] = (ranges[d][0] if d in ranges else i, i)
    return ranges


def class_of_path(relpath: str) -> Optional[str]:
    """'TrainSet/Animal/Bear/7.jpg' -> 'Animal_Bear' (None if not that layout)."""
    parts = relpath.replace("\\", "/").split("/")
    if len(parts) < 4 or parts[-4] != TRAIN_DIR:
        return None
    return f"{parts[-3]}_{parts[-2]}"


# --------------------------------------------------------------------------
# The training set
# --------------------------------------------------------------------------

def check_root(root: str) -> None:
    """Raise ContestFormatError unless ``root`` holds a TrainSet/ folder."""
    if not os.path.isdir(root):
        raise ContestFormatError(f"{root}: dataset root not found")
    if not os.path.isdir(os.path.join(root, TRAIN_DIR)):
        raise ContestFormatError(f"{root}: no {TRAIN_DIR}/ folder here; pass the folder "
                                 f"that holds {TRAIN_DIR}/ and classes.txt")


def scan_trainset(root: str, names: Sequence[str]) -> Dict[int, List[str]]:
    """{class id: sorted relpaths} from ``TrainSet/<Domain>/<Class>/`` folders."""
    check_root(root)
    ids = {n: i for i, n in enumerate(names)}
    by_class = {}
    base = os.path.join(root, TRAIN_DIR)
    for domain in sorted(os.listdir(base)):
        if not os.path.isdir(os.path.join(base, domain)):
            continue
        for cls in sorted(os.listdir(os.path.join(base, domain))):
            folder = os.path.join(base, domain, cls)
            if not os.path.isdir(folder):
                continue
            name = f"{domain}_{cls}"
            if name not in ids:
                raise ContestFormatError(f"{folder}: class {name!r} is not in the class list")
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
            by_class[ids[name]] = [f"{TRAIN_DIR}/{domain}/{cls}/{f}" for f in files]
    return by_class


def group_list(items: Iterable[Tuple[str, int]], names: Sequence[str], source: str) -> Dict[int, List[str]]:
    """{class id: sorted relpaths} from `path label` items, checking each
    path's class folder against its label."""
    by_class = {}
    for p, y in items:
        name = class_of_path(p)
        if name is not None and name != names[y]:
            raise ContestFormatError(f"{source}: {p} is labelled {y} ({names[y]}) "
                                     f"but lies in the folder of {name!r}")
        by_class.setdefault(y, []).append(p)
    return {y: sorted(set(ps)) for y, ps in by_class.items()}


def seeded_split(by_class: Dict[int, List[str]], shots: int, seed: int, val_per_class: int,
                 usable: Callable[[str], Optional[str]], fixed: Optional[Dict[int, List[str]]] = None,
                 log: Callable[[str], Any] = print) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]], Dict[str, list]]:
    """(shots list, val list, report) of [(relpath, label)].

    For each class in id order: shuffle its sorted paths with
    ``default_rng(seed)``; take the first ``shots`` that pass ``usable(relpath)``
    (a failing one is reported and replaced by the next); validation gets up to
    ``val_per_class`` of the remaining images, in the same shuffled order.
    ``fixed`` = {class: [relpaths]} given by the user: those are kept (a bad
    one is still replaced) and excluded from validation.
    """
    rng = np.random.default_rng(seed)
    picked, val, report = [], [], {"replaced": [], "short": []}
    for y in sorted(by_class):
        pool = sorted(by_class[y])
        order = [pool[i] for i in rng.permutation(len(pool))]
        first = sorted((fixed or {}).get(y, []))
        candidates = first + [p for p in order if p not in set(first)]
        chosen, rest = [], []
        for p in candidates:
            if len(chosen) < shots:
                err = usable(p)
                if err is None:
                    chosen.append(p)
                else:
                    log(f"warning: {p}: {err}; replaced by another image of class {y}")
                    report["replaced"].append({"path": p, "label": y, "error": err})
            else:
                rest.append(p)
        if len(chosen) < shots:
            log(f"warning: class {y} has only {len(chosen)} usable images (wanted {shots})")
            report["short"].append(y)
        if not chosen:
            raise ContestFormatError(f"class {y}: no usable training image")
        picked += [(p, y) for p in chosen]
        val += [(p, y) for p in rest[:val_per_class] if p not in set(first)]
    return picked, val, report


# --------------------------------------------------------------------------
# Test folders
# --------------------------------------------------------------------------

_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """'image_10.jpg' sorts after 'image_9.png'."""
    return [int(t) if t.isdigit() else t for t in _NUM.split(name)]


def list_test_images(folder: str) -> List[str]:
    """Image file names in a flat test folder, in natural order."""
    if not os.path.isdir(folder):
        raise ContestFormatError(f"{folder}: test folder not found")
    names = [n for n in os.listdir(folder)
             if n.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise ContestFormatError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    bad = [n for n in names if any(c.isspace() for c in n)]
    if bad:
        raise ContestFormatError(f"{folder}: file names with spaces cannot go in result.txt: {bad[:3]}")
    return sorted(names, key=natural_key)


def format_result(rows: Iterable[Tuple[str, Sequence[int]]], num_classes: int, k: int = 5) -> str:
    """result.txt text from [(file name, ids)], validated; lines in natural order."""
    lines, seen = [], set()
    for name, ids in sorted(rows, key=lambda r: natural_key(r[0])):
        ids = [int(i) for i in ids]
        if name in seen:
            raise ValueError(f"result: {name} twice")
        seen.add(name)
        if len(ids) != k or len(set(ids)) != k:
            raise ValueError(f"result: {name} needs {k} distinct ids, got {ids}")
        if not all(0 <= i < num_classes for i in ids):
            raise ValueError(f"result: {name} has ids outside 0..{num_classes - 1}: {ids}")
        lines.append(name + " " + " ".join(map(str, ids)))
    return "\n".join(lines) + "\n"


def check_result(path: str, folder: str, num_classes: int, k: int = 5) -> Dict[str, List[int]]:
    """Raise ValueError unless ``path`` has one valid line per image in ``folder``."""
    expected = set(list_test_images(folder))
    got = {}
    for n, line in read_lines(path, "result"):
        parts = line.split(" ")
        if len(parts) != k + 1 or not all(x.isdigit() for x in parts[1:]):
            raise ValueError(f"{path}:{n}: expected `name` and {k} ids, got {line!r}")
        ids = [int(x) for x in parts[1:]]
        if len(set(ids)) != k or max(ids) >= num_classes:
            raise ValueError(f"{path}:{n}: ids must be {k} distinct in 0..{num_classes - 1}")
        if parts[0] in got:
            raise ValueError(f"{path}:{n}: {parts[0]} given twice")
        got[parts[0]] = ids
    if set(got) != expected:
        missing, extra = sorted(expected - set(got)), sorted(set(got) - expected)
        raise ValueError(f"{path}: missing {missing[:5]}, not in folder {extra[:5]}")
    return got
