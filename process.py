#!/usr/bin/env python
"""Make the 4-shot training list and a held-out validation list.

    python process.py --root Dataset                       # from Dataset/train.txt (or its folders)
    python process.py --root Dataset --shots-list train_label.txt   # keep your own 4-shot list

Writes (default --out out/lists): train_4shot.txt and val.txt (`path label`,
paths relative to the root, like the official train.txt) and split.json (seed,
source, counts, SHA-256 of both lists, any image that was replaced).  The same
seed gives the same lists on any machine: each class's paths are sorted
before numpy's default_rng(seed) shuffles them.  Every picked image is
decoded; an unreadable or missing one is reported and replaced.
"""
import argparse
import json
import os
import sys
import time

from PIL import Image

from jclip.data.contest import ContestFormatError, check_root, group_list, read_classes, read_labelled_list, scan_trainset, seeded_split, write_labelled_list
from jclip.io import atomic_write_text, sha256_file


def decode_error(root):
    """usable(relpath) -> None, or why the image cannot be used."""
    def usable(rel):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            return "file not found"
        try:
            with Image.open(path) as im:
                im.load()
                if min(im.size) < 1:
                    return "empty image"
        except Exception as e:   # PIL raises many types for bad files
            return f"cannot decode ({type(e).__name__}: {e})"
        return None
    return usable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="dataset root: holds TrainSet/ and classes.txt")
    p.add_argument("--classes", help="class list (default ROOT/classes.txt)")
    p.add_argument("--train-list", help="official list (default ROOT/train.txt; "
                   "without it the TrainSet/ folders are scanned)")
    p.add_argument("--shots-list", help="your own 4-shot list to keep instead of sampling")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--val-per-class", type=int, default=20,
                   help="held-out images per class, from images not picked")
    p.add_argument("--out", default="out/lists", help="folder for the lists")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        check_root(a.root)
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
            raise ContestFormatError(f"{source}: no images for {len(absent)} class(es) of "
                                     f"{classes}: {absent[:5]}")
        fixed = None
        if a.shots_list:
            fixed = group_list(read_labelled_list(a.shots_list, len(names)), names, a.shots_list)
            for y, ps in fixed.items():   # a user's image need not be in train.txt
                by_class[y] = sorted(set(by_class[y]) | set(ps))
        picked, val, report = seeded_split(by_class, a.shots, a.seed, a.val_per_class,
                                           decode_error(a.root), fixed,
                                           log=lambda m: print(m, file=sys.stderr))
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
    except (ContestFormatError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {shots_path} ({len(picked)} images, seed {a.seed}), {val_path} "
          f"({len(val)} images), {len(report['replaced'])} replaced, "
          f"in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
