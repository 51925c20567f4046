"""The fine-tuner's inputs: label ranges, `path label` lists restricted to a
range, image folders, and batches of decoded images.

Lists are read by ``jclip.data.lists`` (the contest's reader: same format,
same errors); images are decoded by ``jclip.data.images`` (one threaded
loader for the package) with the ConvNeXt-V2 card's input size, statistics
and crop.
"""
import os
import sys
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.images import IMAGE_EXTS, Preprocess, TrainTransform, iter_batches, preprocess_for
from ..data.lists import read_labelled_list, read_lines, resolve
from ..progress import progress

# every ConvNeXt-V2 size (atto..huge) shares this card's preprocessing facts
BACKBONE_CARD = "convnextv2_base"

LabelRange = Tuple[int, int]


def parse_label_range(text: Union[str, int]) -> LabelRange:
    """'244-373' -> (244, 373); '7' -> (7, 7)."""
    lo, _, hi = str(text).partition("-")
    lo, hi = int(lo), int(hi or lo)
    if hi < lo:
        raise ValueError(f"label range {text!r}: end before start")
    return lo, hi


def read_list(list_file: str, root: Optional[str] = None,
              label_range: Optional[LabelRange] = None) -> Tuple[List[str], np.ndarray]:
    """(paths, labels) from a file of `path label` lines.

    Parameters: ``root`` the folder relative paths start from (default: the
    list file's folder); ``label_range`` (lo, hi): only labels in [lo, hi]
    are kept, remapped to 0..hi-lo.
    Returns: paths joined to ``root`` and an int64 label array.
    """
    paths, labels = [], []
    for p, label in read_labelled_list(list_file):
        if label_range is not None:
            if not label_range[0] <= label <= label_range[1]:
                continue
            label -= label_range[0]
        paths.append(resolve(p, list_file, root))
        labels.append(label)
    if not paths:
        raise ValueError(f"{list_file}: no images"
                         + (f" with labels {label_range[0]}-{label_range[1]}"
                            if label_range else ""))
    return paths, np.array(labels, np.int64)


def list_images(folder_or_list: str, root: Optional[str] = None) -> List[str]:
    """Image paths of a folder (sorted) or of a list file: one path per line,
    or `path label` lines (a last field of digits is a label and dropped)."""
    if os.path.isdir(folder_or_list):
        return [os.path.join(folder_or_list, n) for n in sorted(os.listdir(folder_or_list))
                if n.lower().endswith(IMAGE_EXTS)]
    paths = []
    for _, line in read_lines(folder_or_list, "image list"):
        parts = line.rsplit(None, 1)
        paths.append(resolve(parts[0] if len(parts) == 2 and parts[1].isdigit() else line,
                             folder_or_list, root))
    return paths


def eval_transform(size: Optional[int] = None) -> Preprocess:
    """timm's eval transform of ConvNeXt-V2 at ``size`` (short side size/crop_pct, centre crop)."""
    return preprocess_for(BACKBONE_CARD, size)


def train_transform(size: Optional[int] = None, scale: Tuple[float, float] = (0.35, 1.0)) -> TrainTransform:
    """Random resized crop + flip with ConvNeXt-V2's normalisation; called as ``t(img, rng)``."""
    return TrainTransform.for_model(BACKBONE_CARD, size, scale)


def image_batches(paths: Sequence[str], batch_size: int, transform, bad: List[str],
                  threads: int = 4, strict: bool = False, seeds: Optional[Sequence[int]] = None,
                  desc: Optional[str] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields (array N,3,H,W, indices into paths) per batch of readable images.

    An unreadable file is warned about once (its path appended to ``bad``)
    and skipped; ``strict`` raises ImageLoadError instead.  ``seeds`` (one per
    path) drive an augmenting ``transform(img, rng)``; ``desc`` shows a bar.
    """
    with progress(total=len(paths), desc=desc, enabled=desc is not None, leave=False) as bar:
        for idx, batch, errors in iter_batches(paths, transform, batch_size, max(1, threads),
                                               strict, seeds):
            for path, msg in errors:
                if path not in bad:
                    bad.append(path)
                    print(f"warning: skipping unreadable image: {msg}", file=sys.stderr)
            bar.update(len(idx) + len(errors))
            if idx:
                yield batch, np.array(idx)
