"""Multi-task episodic prompt learning evaluated on held-out classes.

The tiered-ImageNet recipe: CoCoOp (or CoOp) trains on the *train* classes,
each step one N-way K-shot task (default 5-way 1-shot); the *val* classes
choose the epoch; the *test* classes, never seen in training, are scored
all-way (or N-way episodes) before and after, with two classifiers:

- text: zero-shot prompts before (``--templates``), the learned prompts after;
- nearest centroid: each class is the mean of K support image features
  (normalised), a query goes to the closest (cosine) centroid.  CoOp and
  CoCoOp leave CLIP's image tower frozen, so this classifier is the same
  before and after; it is reported once, as the image-only reference.

Every (training seed, evaluation episode) gives one accuracy per row; the
table shows their mean and 95% interval.  The text logits of every test
image over every test class are computed once per trained learner, and an
episode takes its columns (a CoCoOp logit depends only on its own image and
class, so this equals scoring the episode alone).
"""
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .. import distributed
from ..heads import HEADS, l2_normalize
from ..heads.episodes import check_episode_data, sample_episode
from ..metrics import mean_ci95, topk_accuracy
from .datasets import ClassSplits, Split, check_every_class, keep_readable

EPISODIC_METHODS = ("coop", "cocoop")


def nearest_centroid_logits(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray,
                            num_classes: int) -> np.ndarray:
    """(Q, C) cosine similarities of normalised queries to the normalised
    class means of normalised support features."""
    s = l2_normalize(np.asarray(support, dtype=np.float64))
    centres = np.zeros((num_classes, s.shape[1]))
    np.add.at(centres, np.asarray(support_labels), s)
    return l2_normalize(np.asarray(query, dtype=np.float64)) @ l2_normalize(centres).T


def sample_per_class(labels: np.ndarray, per_class: Optional[int], seed: int) -> np.ndarray:
    """Indices of up to ``per_class`` images of each class (all with None), seeded."""
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(out))


def evaluate(features: np.ndarray, labels: np.ndarray, text_logits: Mapping[str, np.ndarray],
             way: Optional[int], support: int, query: Optional[int], episodes: int, seed: int
             ) -> List[Dict[str, Any]]:
    """Score test episodes: per episode, the text classifiers (``text_logits``:
    {name: (N, C) logits over every test class}) and the nearest centroid on
    the same queries.

    Parameters: way: classes per episode (None: all of them); support: K
    images per class for the centroids; query: images per class scored
    (None: the rest); episodes: how many; seed: the episodes' draws.
    Returns: rows {classifier, episode, way, queries, top1 (%)}.
    """
    num_classes = int(labels.max()) + 1
    way = num_classes if way is None else way
    check_episode_data(labels, way, support, np.arange(num_classes), query or 0,
                       what="test classes (--eval-way / --support / --query)")
    rows = []
    for e in range(episodes):
        ep = sample_episode(labels, way, support, np.random.default_rng([seed, e]), query=query,
                            classes=np.arange(num_classes))
        scores = {name: logits[ep.query][:, ep.classes] for name, logits in text_logits.items()}
        scores["centroid"] = nearest_centroid_logits(features[ep.support], ep.support_labels,
                                                     features[ep.query], way)
        for name, s in scores.items():
            rows.append(dict(classifier=name, episode=e, way=way, queries=len(ep.query),
                             top1=100.0 * topk_accuracy(s, ep.query_labels, 1)))
    return rows


def readable_splits(tr: Split, train_x, te: Split, test_x, val, errors=None):
    """The splits and the val features (``val``: None or (paths, labels,
    features); returned as (features, labels)) without their unreadable images
    (each named, then counted); DatasetError when a class is left without one."""
    out = []
    for what, split, x in (("train classes", tr, train_x), ("test classes", te, test_x)):
        paths, labels, x = keep_readable(f"{what} ({split.source})", split.paths, split.labels, x, errors)
        check_every_class(f"{what} ({split.source})", labels, split.class_names)
        out += [Split(split.source, split.class_names, paths, labels), x]
    if val is not None:              # (paths, labels, features): each unreadable one named
        paths, labels, x = keep_readable("val classes", *val, errors)
        val = (x, labels)
    return (*out, val)


def run_episodic(splits: ClassSplits, backbone, methods: Sequence[str], seeds: Sequence[int],
                 episode: Any = "5-way 1-shot", eval_way: Optional[int] = None, support: int = 1,
                 query: Optional[int] = None, eval_episodes: int = 5, val_per_class: Optional[int] = 10,
                 templates: str = "single", params: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 save_dir: Optional[str] = None, log: Callable[[str], None] = print) -> List[dict]:
    """Train each prompt learner multi-task on the train classes and score
    the test classes before and after (see the module docstring).

    Parameters: episode: the training task ("5-way 1-shot"); eval_way,
    support, query, eval_episodes: as ``evaluate``; val_per_class: val images
    per class used to choose the epoch (None: all); templates: the zero-shot
    prompts; params: {method: hyper-parameters}; save_dir: learned prompts.
    Returns: rows {method, classifier, stage, seed, episode, way, queries, top1, seconds}.
    Under mpirun the ranks share the encoding, then only rank 0 goes on.
    """
    from .study import make_head
    for m in methods:
        if m not in EPISODIC_METHODS:
            raise ValueError(f"episodic training supports {', '.join(EPISODIC_METHODS)}, not {m!r}")
    params = dict(params or {})
    tr, va, te = splits.train, splits.val, splits.test
    train_x = backbone.images(tr.paths)
    test_x = backbone.images(te.paths)
    val = None
    if va is not None:
        keep = sample_per_class(va.labels, val_per_class, seed=0)
        val_paths = [va.paths[i] for i in keep]
        val = (val_paths, va.labels[keep], backbone.images(val_paths))
    text_weights = backbone.text_weights(te.class_names, templates)
    distributed.leave()         # under mpirun: the other ranks end here, rank 0 trains
    tr, train_x, te, test_x, val = readable_splits(tr, train_x, te, test_x, val, getattr(backbone, "errors", None))
    zero = 100.0 * test_x @ text_weights.T
    rows = []
    for seed in seeds:
        text = {"zeroshot": zero}
        for method in methods:
            start = time.perf_counter()
            kw = dict(params.get(method) or {}, episode=episode,
                      val_class_names=va.class_names if va is not None else None)
            head = make_head(method, seed, model=backbone.model, class_names=tr.class_names, params=kw)
            head.fit(train_x, tr.labels, *(val if val is not None else (None, None)))
            text[method] = head.logits(test_x, te.class_names)
            if save_dir:
                head.save(os.path.join(save_dir, f"{method}-episodic-seed{seed}.npz"))
            log(f"{HEADS[method].label}: trained on {len(tr.class_names)} classes, seed {seed}"
                + (f", best epoch {head.best_epoch_}" if head.best_epoch_ is not None else "")
                + f" ({time.perf_counter() - start:.1f} s)")
        for r in evaluate(test_x, te.labels, text, eval_way, support, query, eval_episodes, seed):
            name = r.pop("classifier")
            method, classifier, stage = {"zeroshot": ("zeroshot", "text", "before"),
                                         "centroid": ("centroid", "centroid", "before")}.get(
                name, (name, "text", "after"))
            rows.append(dict(method=method, classifier=classifier, stage=stage, seed=seed, **r))
    return rows


def summarise_episodic(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One line per (method, classifier, stage): way, n, mean top-1 and 95% interval."""
    groups: Dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["method"], r["classifier"], r["stage"], r["way"]), []).append(r["top1"])
    out = []
    for (method, classifier, stage, way), accs in groups.items():
        mean, ci = mean_ci95(accs)
        out.append(dict(method=method, classifier=classifier, stage=stage, way=way, n=len(accs),
                        top1=mean, ci95=ci))
    return out


def format_episodic(rows: Sequence[Mapping[str, Any]]) -> str:
    """A text table: method, classifier, stage, way, n, 'mean ± 95% interval'."""
    labels = dict({m: HEADS[m].label for m in HEADS}, centroid="Nearest centroid")
    head = ["method", "classifier", "stage", "way", "n", "top-1 (95% CI)"]
    lines = [[labels.get(s["method"], s["method"]), s["classifier"], s["stage"], str(s["way"]),
              str(s["n"]), f"{s['top1']:.2f} ± {s['ci95']:.2f}"] for s in summarise_episodic(rows)]
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: " | ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(l) for l in lines])
