"""Make the 4-shot training list and a held-out validation list.

    python process.py --root Dataset                       # from Dataset/train.txt (or its folders)
    python process.py --root Dataset --shots-list train_label.txt   # keep your own 4-shot list

Writes (default --out out/lists): train_4shot.txt and val.txt (`path label`,
paths relative to the root, like the official train.txt) and split.json (seed,
source, counts, SHA-256 of both lists, every image that was replaced).  The
same seed gives the same lists on any machine: each class's paths are sorted
before numpy's default_rng(seed) shuffles them.  Every image that goes into
either list is decoded first: an unreadable or missing shot is reported and
replaced by the class's next image; so is an unreadable validation image (a
class that runs out is listed as short).
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from ..commands import CommandParser, existing_file, non_negative_int, positive_int, run, seed
from ..io import atomic_write_text, sha256_file
from ..progress import progress
from .contest import ContestFormatError, check_root, group_list, scan_trainset, seeded_split
from .images import ImageLoadError, default_workers, read_image, to_rgb
from .lists import ListFormatError, read_classes, read_labelled_list, write_labelled_list


def _check_decodes(img):
    if min(img.size) < 1:
        raise ValueError("empty image")
    to_rgb(img)       # as the encoders convert it (CMYK, 16-bit, palettes)
    return True


def decode_error(root):
    """usable(relpath) -> None, or why the image cannot be used."""
    def usable(rel):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            return "file not found"
        try:
            read_image(path, _check_decodes)
        except ImageLoadError as e:
            return str(e)[len(path) + 2:]        # the reason, without the path
        return None
    return usable


def pick_validation(rest, n, usable, log, workers=None):
    """The first ``n`` usable images of each class's remaining images, in order.

    Parameters: rest: [(relpath, label)] in the split's order (grouped by
    class); n: images wanted per class; usable: relpath -> None or why not.
    Returns: (val list, report): report = {"val_replaced": [{path, label,
    error}], "val_short": [classes with fewer than n usable images]}.
    Candidates are decoded n per class at a time, in threads; a bad one is
    replaced by the class's next image.
    """
    by_class = {}
    for p, y in rest:
        by_class.setdefault(y, []).append(p)
    chosen = {y: [] for y in by_class}
    pos = dict.fromkeys(by_class, 0)
    report = {"val_replaced": [], "val_short": []}
    with ThreadPoolExecutor(workers or default_workers()) as pool, \
            progress(total=sum(min(n, len(ps)) for ps in by_class.values()),
                     desc="decode validation images", unit="img") as bar:
        while True:
            todo = []
            for y, ps in by_class.items():
                want = n - len(chosen[y])
                todo += [(y, p) for p in ps[pos[y]:pos[y] + want]]
                pos[y] += want
            if not todo:
                break
            for (y, p), err in zip(todo, pool.map(usable, [p for _, p in todo])):
                if err is None:
                    chosen[y].append(p)
                    bar.update(1)
                else:
                    log(f"warning: {p}: {err}; left out of validation"
                        + (", replaced by another image of its class" if pos[y] < len(by_class[y]) else ""))
                    report["val_replaced"].append({"path": p, "label": y, "error": err})
    for y in by_class:
        if len(chosen[y]) < n and any(r["label"] == y for r in report["val_replaced"]):
            report["val_short"].append(y)
    return [(p, y) for y in by_class for p in chosen[y]], report


def dataset_root(text: str) -> str:
    """--root: a folder holding TrainSet/ (checked before any work)."""
    try:
        check_root(text)
    except ContestFormatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python process.py``."""
    p = CommandParser(prog="process.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, type=dataset_root,
                   help="dataset root: holds TrainSet/ and classes.txt")
    p.add_argument("--classes", type=existing_file, help="class list (default ROOT/classes.txt)")
    p.add_argument("--train-list", type=existing_file, help="official list (default ROOT/train.txt; "
                   "without it the TrainSet/ folders are scanned)")
    p.add_argument("--shots-list", type=existing_file, help="your own 4-shot list to keep instead of sampling")
    p.add_argument("--shots", type=positive_int, default=4)
    p.add_argument("--seed", type=seed, default=1)
    p.add_argument("--val-per-class", type=non_negative_int, default=20,
                   help="held-out images per class, from images not picked")
    p.add_argument("--out", default="out/lists", help="folder for the lists")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python process.py``; returns the exit status."""
    return run(lambda: make_lists(build_parser().parse_args(argv)))


def make_lists(a: argparse.Namespace) -> None:
    """Write the lists and split.json that ``a`` asks for."""
    t0 = time.time()
    log = lambda m: print(m, file=sys.stderr)   # noqa: E731
    classes = a.classes or os.path.join(a.root, "classes.txt")
    names = read_classes(classes)
    train_list = a.train_list or os.path.join(a.root, "train.txt")
    if a.train_list or os.path.isfile(train_list):
        source = train_list
        by_class = group_list(read_labelled_list(train_list, len(names)), names, train_list)
    else:
        source = os.path.join(a.root, "TrainSet") + "/ (folders; no train.txt)"
        by_class = scan_trainset(a.root, names)
    print(f"{sum(map(len, by_class.values()))} images in {len(by_class)} classes from {source}")
    absent = [names[i] for i in range(len(names)) if i not in by_class]
    if absent:
        raise ListFormatError(f"{source}: no images for {len(absent)} class(es) of "
                              f"{classes}: {absent[:5]}")
    fixed = None
    if a.shots_list:
        fixed = group_list(read_labelled_list(a.shots_list, len(names)), names, a.shots_list)
        for y, ps in fixed.items():   # a user's image need not be in train.txt
            by_class[y] = sorted(set(by_class[y]) | set(ps))
    usable = decode_error(a.root)
    with progress(total=a.shots * len(by_class), desc="decode shots", unit="img") as bar:
        def counted(rel):
            bar.update(1)
            return usable(rel)
        # every remaining image in the split's order; validation takes the first usable ones
        most = max(map(len, by_class.values()))
        picked, rest, report = seeded_split(by_class, a.shots, a.seed, most, counted, fixed, log=log)
    val, val_report = pick_validation(rest, a.val_per_class, usable, log)
    report.update(val_report)
    shots_path = os.path.join(a.out, "train_4shot.txt")
    val_path = os.path.join(a.out, "val.txt")
    write_labelled_list(shots_path, picked)
    write_labelled_list(val_path, val)
    info = {"root": os.path.abspath(a.root), "classes": os.path.abspath(classes),
            "source": source, "shots_list": a.shots_list, "shots": a.shots,
            "seed": a.seed, "val_per_class": a.val_per_class,
            "num_shots": len(picked), "num_val": len(val),
            "train_4shot_sha256": sha256_file(shots_path),
            "val_sha256": sha256_file(val_path), **report}
    atomic_write_text(os.path.join(a.out, "split.json"), json.dumps(info, indent=1) + "\n")
    print(f"wrote {shots_path} ({len(picked)} images, seed {a.seed}), {val_path} "
          f"({len(val)} images), {len(report['replaced'])} shots and "
          f"{len(report['val_replaced'])} validation images replaced, in {time.time() - t0:.1f} s")

