"""Few-shot datasets: image folders or ``path label`` lists, a seeded per-class
test split, and seeded nested shots with a validation split.

- ``--data ROOT``: ``ROOT/<class>/<image>``; a seeded per-class share is held
  out as the test split;
- ``--train`` and ``--test``: each a folder like ROOT or a ``path label``
  list (read by ``jclip.data.lists``; relative paths are read from the
  list's folder; labels are class names, or integers naming lines of
  ``--class-names``).
"""
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.images import IMAGE_EXTS
from ..data.lists import ListFormatError, read_labelled_list, read_lines, resolve
from ..heads.templates import class_key


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file or folder."""


@dataclass
class Dataset:
    """Class names, and train / test image paths with int labels."""

    class_names: List[str]
    train_paths: List[str]
    train_labels: np.ndarray
    test_paths: List[str]
    test_labels: np.ndarray

    def describe(self) -> str:
        """'C classes, N train / M test images'."""
        return (f"{len(self.class_names)} classes, {len(self.train_paths)} train / "
                f"{len(self.test_paths)} test images")


def read_folder(root: str) -> Tuple[List[str], List[str]]:
    """(paths, class name per path) from ``root/<class>/<image>``.

    Raises DatasetError for a missing folder, no class folders, or a class
    folder without images.  An image name that is not a readable file (a
    symlink loop, a dangling link, a folder) is reported and left out.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: not a folder")
    paths, names = [], []
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                     and not d.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    empty, skipped = [], 0
    for c in classes:
        files = []
        for f in sorted(os.listdir(os.path.join(root, c))):
            if not f.lower().endswith(IMAGE_EXTS) or f.startswith("."):
                continue
            if os.path.isfile(os.path.join(root, c, f)):
                files.append(f)
            else:       # isfile follows links: a loop or a dangling link is not one
                print(f"warning: {os.path.join(root, c, f)}: unreadable image (not a file: "
                      f"{_why_not_a_file(os.path.join(root, c, f))}); skipped", file=sys.stderr)
                skipped += 1
        if not files:
            empty.append(c)
        paths += [os.path.join(root, c, f) for f in files]
        names += [c] * len(files)
    if empty:
        raise DatasetError(f"{root}: class folder(s) without images "
                           f"({', '.join(IMAGE_EXTS)}): {', '.join(empty[:5])}")
    if skipped:
        print(f"{root}: {skipped} unreadable image(s) skipped", file=sys.stderr)
    return paths, names


def _why_not_a_file(path: str) -> str:
    try:
        os.stat(path)
    except OSError as e:
        return e.strerror or type(e).__name__
    return "a folder" if os.path.isdir(path) else "not a regular file"


def read_list(path: str) -> Tuple[List[str], List[str]]:
    """(paths, labels as strings) from a ``path label`` list (the shared
    reader: the label is the last field, so paths may contain spaces).

    Raises DatasetError for a malformed list or an image that does not exist.
    """
    try:
        items = read_labelled_list(path, numeric=False)
    except ListFormatError as e:
        raise DatasetError(str(e)) from None
    paths = []
    for p, _ in items:
        full = resolve(p, path)
        if not os.path.isfile(full):
            raise DatasetError(f"{path}: image {p!r} not found (looked at {full})")
        paths.append(full)
    return paths, [str(label) for _, label in items]


def read_source(source: str) -> Tuple[List[str], List[str]]:
    """A folder or a list file, whichever ``source`` is."""
    if os.path.isdir(source):
        return read_folder(source)
    if os.path.isfile(source):
        return read_list(source)
    raise DatasetError(f"{source}: no such folder or list file")


def name_classes(labels: Sequence[str], class_names: Optional[Sequence[str]] = None
                 ) -> Tuple[List[str], np.ndarray]:
    """Class names and int labels.

    Parameters: labels: strings; class_names: with them a label is one of the
    names or an integer index into them; without, the sorted distinct labels
    (numbers in numeric order first) are the names.
    Returns: (names, int64 labels).  Raises DatasetError for unknown labels.
    """
    if class_names is None:
        names = sorted(set(labels), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    else:
        names = list(class_names)
    index = {c: i for i, c in enumerate(names)}
    ids, unknown = [], set()
    for s in labels:
        if s in index:
            ids.append(index[s])
        elif class_names is not None and s.isdigit() and int(s) < len(names):
            ids.append(int(s))
        else:
            unknown.add(s)
    if unknown:
        raise DatasetError(f"labels that are neither one of the {len(names)} class names nor an "
                           f"index into them: {', '.join(sorted(unknown)[:5])}")
    return names, np.array(ids, dtype=np.int64)


def read_class_names(path: str) -> List[str]:
    """One class name per line (blank and ``#`` lines skipped)."""
    try:
        return [line for _, line in read_lines(path, "class-name file")]
    except ListFormatError as e:
        raise DatasetError(str(e)) from None


def load_dataset(data: Optional[str] = None, train: Optional[str] = None, test: Optional[str] = None,
                 test_fraction: float = 0.5, class_names: Union[None, str, Sequence[str]] = None,
                 split_seed: int = 0) -> Dataset:
    """A Dataset from ``data`` (one folder, split per class with a fixed seed)
    or from ``train`` and ``test`` (folders or lists).

    Parameters: test_fraction: the share of each class held out with
    ``data``; class_names: a file of names or the names; split_seed.
    Raises DatasetError naming what is wrong.
    """
    if data is not None and (train is not None or test is not None):
        raise DatasetError("give either --data, or --train and --test, not both")
    if isinstance(class_names, str):
        class_names = read_class_names(class_names)
    if data is not None:
        paths, labels = read_source(data)
        names, y = name_classes(labels, class_names)
        if not 0 < test_fraction < 1:
            raise DatasetError("--test-fraction must be between 0 and 1")
        rng = np.random.default_rng(split_seed)
        is_test = np.zeros(len(y), bool)
        for c in range(len(names)):
            idx = rng.permutation(np.flatnonzero(y == c))
            if len(idx) < 2:
                raise DatasetError(f"{data}: class {names[c]!r} has {len(idx)} image(s); "
                                   f"a train/test split needs at least 2")
            is_test[idx[:max(1, int(round(len(idx) * test_fraction)))]] = True
        pick = lambda m: [p for p, t in zip(paths, m) if t]   # noqa: E731
        return Dataset(names, pick(~is_test), y[~is_test], pick(is_test), y[is_test])
    if train is None or test is None:
        raise DatasetError("give --data ROOT, or both --train and --test")
    train_paths, train_labels = read_source(train)
    test_paths, test_labels = read_source(test)
    names, y = name_classes(train_labels + test_labels, class_names)
    missing = sorted(set(range(len(names))) - set(y[:len(train_paths)].tolist()))
    if missing:
        raise DatasetError(f"{train}: no training images for class(es) "
                           f"{', '.join(names[i] for i in missing[:5])}")
    n = len(train_paths)
    return Dataset(names, train_paths, y[:n], test_paths, y[n:])


def keep_readable(what: str, paths: Sequence[str], labels: np.ndarray, features: np.ndarray,
                  errors: Optional[Dict[str, str]] = None) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(paths, labels, features) without the images that could not be decoded
    (zero feature rows; real features are unit length), each reported on
    stderr with its reason (``errors``: path -> why), then their count, as the
    pipeline reports unreadable images.  ``what`` names the split."""
    features = np.asarray(features)
    ok = np.any(features != 0, axis=1)
    if ok.all():
        return list(paths), labels, features
    errors = errors or {}
    for i in np.flatnonzero(~ok):
        why = errors.get(paths[i]) or errors.get(os.path.abspath(paths[i]))
        print(f"warning: {paths[i]}: unreadable image" + (f" ({why.split(': ', 1)[-1]})" if why else "")
              + "; skipped", file=sys.stderr)
    print(f"{what}: {int((~ok).sum())} unreadable image(s) skipped", file=sys.stderr)
    return [p for p, k in zip(paths, ok) if k], np.asarray(labels)[ok], features[ok]


def check_every_class(what: str, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """DatasetError naming the classes of ``what`` left without an image."""
    missing = sorted(set(range(len(class_names))) - set(np.asarray(labels).tolist()))
    if missing:
        raise DatasetError(f"{what}: no readable image for class(es) "
                           f"{', '.join(class_names[i] for i in missing[:5])}")


def check_classes_for(what: str, class_names: Sequence[str], at_least: int) -> None:
    """DatasetError unless there are ``at_least`` classes for ``what``."""
    if len(class_names) < at_least:
        raise DatasetError(f"{what} needs at least {at_least} classes; the dataset has "
                           f"{len(class_names)} ({', '.join(class_names[:5])})")


def sample_shots(labels: np.ndarray, shots: int, seed: int, val_per_class: int = 4
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """(shot indices, validation indices): per class, the first ``shots`` of a
    seeded permutation, then up to min(shots, val_per_class) more (fewer if
    the class runs out).  Nested in ``shots`` for a fixed seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:shots])
        val.append(idx[shots:shots + min(shots, val_per_class)])
    return np.concatenate(train), np.concatenate(val)


@dataclass
class Split:
    """One class-disjoint split: its class names, image paths and int labels
    (indices into its own class names)."""

    source: str
    class_names: List[str]
    paths: List[str]
    labels: np.ndarray


@dataclass
class ClassSplits:
    """Class-disjoint train / (val) / test splits (tiered-ImageNet style)."""

    train: Split
    val: Optional[Split]
    test: Split

    def describe(self) -> str:
        """'train C classes / N images, val ..., test ...'."""
        parts = [(n, s) for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s]
        return ", ".join(f"{n} {len(s.class_names)} classes / {len(s.paths)} images" for n, s in parts)


SPLIT_FOLDERS = ("train", "val", "test")


def split_root(root: str) -> Optional[Dict[str, str]]:
    """{"train": ..., "test": ..., ["val": ...]} when ``root`` holds split
    folders (``train/`` and ``test/``, optionally ``val/``, each of class
    folders) and nothing else; None for an ordinary ``ROOT/<class>`` folder."""
    if not os.path.isdir(root):
        return None
    subdirs = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")}
    if not {"train", "test"} <= subdirs or not subdirs <= set(SPLIT_FOLDERS):
        return None
    return {d: os.path.join(root, d) for d in SPLIT_FOLDERS if d in subdirs}


def read_split(source: str) -> Split:
    """A split from a class folder tree or a ``path label`` list (labels are class names)."""
    paths, labels = read_source(source)
    names, y = name_classes(labels)
    return Split(source, names, paths, y)


def load_class_splits(train: str, test: str, val: Optional[str] = None) -> ClassSplits:
    """Class-disjoint splits from folders or lists.

    Raises DatasetError naming the split when a class name appears in two
    splits (a test class must never be seen in training) or a split is bad.
    Names are compared as the text encoder sees them (``class_key``:
    'Golden_Retriever' and 'golden retriever' are one class).
    """
    splits = {"train": read_split(train), "test": read_split(test)}
    if val is not None:
        splits["val"] = read_split(val)
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        if a in splits and b in splits:
            keys = {class_key(c) for c in splits[b].class_names}
            shared = sorted(c for c in splits[a].class_names if class_key(c) in keys)
            if shared:
                raise DatasetError(f"{splits[a].source}: class(es) {', '.join(shared[:5])} are also "
                                   f"{b} classes ({splits[b].source}); the splits must be class-disjoint")
    return ClassSplits(splits["train"], splits.get("val"), splits["test"])
