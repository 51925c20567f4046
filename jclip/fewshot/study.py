"""A few-shot study: every method x shots x seed on one dataset, through HEADS.

Shots are sampled per class from a seeded permutation, so the 1-shot set is
inside the 5-shot set for the same seed.  A validation split for the heads
that choose hyper-parameters (linear probe C, Tip-Adapter beta/alpha, LP++
and Tip-Adapter-F epochs) is the next min(shots, 4) images per class of the
same permutation - always from the train split, never the test set.

Base-to-new: the first half of the sorted classes is "base", the rest
"new"; methods train on base shots and are scored on base test images among
base classes and on new test images among new classes, with the harmonic
mean H.  Heads with per-class parameters (linear probe, Tip-Adapter, LP++)
cannot score unseen classes: their "new" is NaN.
"""
import copy
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .. import distributed
from ..heads import HEADS
from ..metrics import accuracies
from .datasets import Dataset, DatasetError, check_every_class, keep_readable, sample_shots

# every head that learns from labelled shots (InMaP is transductive: not a few-shot method)
METHODS = tuple(name for name, spec in HEADS.items() if not spec.transductive)
# heads that fit on images re-encode them at every step: asked for by name only; so are
# the transductive TransCLIP, TransCLIP-ZS and ZLaP (they label the test split together,
# not comparable with the inductive heads in one table) and APE and ProKeR (grid searches,
# ~15 s a fit at contest size): the default is every inductive head that fits in seconds
BY_NAME_ONLY = ("transclip", "transclip_zs", "zlap", "ape", "proker")
DEFAULT_METHODS = tuple(name for name in METHODS if not HEADS[name].needs_images and name not in BY_NAME_ONLY)
LABELS = {name: HEADS[name].label for name in METHODS}


def scores(logits: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """{'top1', 'top5'} accuracies in % (top-5 is 100 with 5 or fewer classes)."""
    acc = accuracies(logits, labels, ks=(1, 5), percent=True)
    return {"top1": acc["top1"], "top5": acc["top5"]}


def make_head(method: str, seed: int, text_weights: Optional[np.ndarray] = None,
              num_classes: Optional[int] = None, model: Any = None,
              class_names: Optional[Sequence[str]] = None, has_val: bool = True,
              params: Optional[Mapping[str, Any]] = None, preprocess: Any = None):
    """An unfitted head for ``method``, built from what HEADS says it needs.

    Parameters: seed: for heads with a ``seed``; text_weights (C, D);
    num_classes; model and class_names (prompt learners); has_val: False
    applies the spec's ``no_val_params``; params: hyper-parameters for this
    method (None values: the class default); preprocess: the image transform
    of heads that fit on images.
    Returns: the head.
    """
    if method not in HEADS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    spec = HEADS[method]
    names = spec.param_names()
    kw: Dict[str, Any] = {k: v for k, v in dict(params or {}).items() if v is not None}
    unknown = sorted(set(kw) - set(names))
    if unknown:
        raise ValueError(f"{spec.class_name} has no hyper-parameter(s) {unknown}")
    if spec.needs_text:
        kw["text_weights"] = text_weights
    if spec.needs_model:
        kw.update(model=model, class_names=list(class_names))
    if spec.needs_images:
        kw["preprocess"] = preprocess
    if "num_classes" in names:
        kw["num_classes"] = num_classes
    if "seed" in names:
        kw["seed"] = seed
    if not has_val:
        kw.update(spec.no_val_params)
    return spec.cls(**kw)


def new_class_logits(method: str, head, features: np.ndarray, text_weights: np.ndarray,
                     class_names: Sequence[str]) -> np.ndarray:
    """Logits of a fitted transferring head over classes it never trained on:
    prompt learners take the new names; text-defined heads a copy refitted
    on the new classes' text weights (nothing is learned from shots)."""
    spec = HEADS[method]
    if not spec.transfers:
        raise ValueError(f"{spec.label} cannot score classes it was not trained on")
    if spec.needs_model:
        return head.logits(features, class_names=list(class_names))
    return copy.deepcopy(head).set_params(text_weights=text_weights).fit().logits(features)


def pick(inputs, mask: np.ndarray):
    """The rows of a feature array, or the entries of a list of files, where ``mask``."""
    return inputs[mask] if isinstance(inputs, np.ndarray) else [p for p, m in zip(inputs, mask) if m]


def harmonic(a: float, b: float) -> float:
    """Harmonic mean of two accuracies (0 when both are 0)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def readable_part(ds: Dataset, train_x: np.ndarray, test_x: np.ndarray, errors=None):
    """(ds, train_x, test_x) without the unreadable images (reported, counted);
    DatasetError when a class is left without a training image."""
    train_paths, train_y, train_x = keep_readable("train", ds.train_paths, ds.train_labels, train_x, errors)
    test_paths, test_y, test_x = keep_readable("test", ds.test_paths, ds.test_labels, test_x, errors)
    check_every_class("train", train_y, ds.class_names)
    return Dataset(ds.class_names, train_paths, train_y, test_paths, test_y), train_x, test_x


def run_study(ds: Dataset, backbone, methods: Sequence[str], shots_list: Sequence[int],
              seeds: Sequence[int], templates: str = "imagenet7", base_to_new: bool = False,
              params: Optional[Mapping[str, Mapping[str, Any]]] = None,
              save_dir: Optional[str] = None, log: Callable[[str], None] = print) -> List[dict]:
    """Fit and score every method x shots x seed.

    Parameters: ds: the dataset; backbone: a ``CachedEncoder`` (features and text
    weights); methods: HEADS names; templates: prompt set for the text
    weights; base_to_new: see the module docstring; params: {method:
    {hyper-parameter: value}}; save_dir: where learned prompts
    (``<method>-<k>shot-seed<s>.npz``) are saved; log: one line per fit.
    Returns: rows (dicts), one per method x shots x seed, with top-1/top-5 in %
    (base-to-new: base_*, new_*, and H of the top-1s) and seconds.

    Under mpirun every rank calls this: the ranks share the encoding, then the
    ranks other than 0 exit (``distributed.leave``) and rank 0 fits the heads.
    """
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} (known: {', '.join(METHODS)})")
    params = dict(params or {})
    train_x = backbone.images(ds.train_paths)
    test_x = backbone.images(ds.test_paths)
    names = ds.class_names
    text = backbone.text_weights(names, templates)
    distributed.leave()         # under mpirun: the other ranks end here, rank 0 fits the heads
    ds, train_x, test_x = readable_part(ds, train_x, test_x, getattr(backbone, "errors", None))
    # heads that fit on images get the files themselves (decoded per batch)
    train_files, test_files = np.array(ds.train_paths, dtype=object), np.array(ds.test_paths, dtype=object)
    c = len(names)
    if base_to_new:
        if c < 2:
            raise DatasetError("base-to-new needs at least 2 classes")
        base = np.arange((c + 1) // 2)
        new = np.arange(len(base), c)
        keep = np.isin(ds.train_labels, base)
        train_x, train_y, train_files = train_x[keep], ds.train_labels[keep], train_files[keep]
        train_names, train_text = [names[i] for i in base], text[base]
        tb, tn = np.isin(ds.test_labels, base), np.isin(ds.test_labels, new)
    else:
        train_y, train_names, train_text = ds.train_labels, names, text
    rows = []
    for shots in shots_list:
        for seed in seeds:
            idx, vidx = sample_shots(train_y, shots, seed)
            x, y, xv, yv = train_x[idx], train_y[idx], train_x[vidx], train_y[vidx]
            has_val = len(yv) > 0
            for method in methods:
                start = time.perf_counter()
                spec = HEADS[method]
                head = make_head(method, seed, train_text, len(train_names), backbone.model,
                                 train_names, has_val, params.get(method),
                                 getattr(backbone, "preprocess", None))
                inputs = test_files.tolist() if spec.needs_images else test_x
                if spec.needs_images:
                    head.fit(train_files[idx].tolist(), y)
                else:
                    head.fit(x, y, *((xv, yv) if has_val else (None, None)))
                if save_dir and spec.needs_model:
                    ext = "safetensors" if spec.needs_images else "npz"
                    head.save(os.path.join(save_dir, f"{method}-{shots}shot-seed{seed}.{ext}"))
                row = dict(method=method, shots=shots, seed=seed)
                if not base_to_new:
                    row.update(scores(head.logits(inputs), ds.test_labels))
                else:
                    b = scores(head.logits(pick(inputs, tb)), ds.test_labels[tb])
                    row.update(base_top1=b["top1"], base_top5=b["top5"])
                    if spec.transfers:
                        logits = new_class_logits(method, head, pick(inputs, tn), text[new],
                                                  [names[i] for i in new])
                        n = scores(logits, ds.test_labels[tn] - len(base))
                        row.update(new_top1=n["top1"], new_top5=n["top5"],
                                   H=harmonic(b["top1"], n["top1"]))
                    else:
                        row.update(new_top1=float("nan"), new_top5=float("nan"), H=float("nan"))
                row["seconds"] = round(time.perf_counter() - start, 3)
                rows.append(row)
                log(f"{LABELS[method]:>13} {shots:>3}-shot seed {seed}: " +
                    ", ".join(f"{k} {v:.2f}" for k, v in row.items()
                              if k not in ("method", "shots", "seed", "seconds")))
    return rows
