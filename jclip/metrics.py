"""Top-k accuracy, computed in one place for every stage (heads, fewshot,
finetune, validate).

Scores may be given as logits / probabilities (a float (N, C) array) or as
class ids already ranked best first (an integer (N, k') array, e.g. from
``topk_ids`` or a cascade).  Ties among equal scores go to the lower class id,
the same rule as ``numpy.argmax``.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


def topk_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Class ids of the ``k`` highest scores, best first.

    Parameters: logits (N, C) scores; k in 1..C.
    Returns: (N, k) int64 ids; ties go to the lower id (stable).
    """
    logits = np.asarray(logits)
    k = int(k)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {logits.shape}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in 1..{logits.shape[1]}, got {k}")
    # argpartition keeps this O(N C) for large C; then sort only the k kept
    if k < logits.shape[1]:
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(logits.shape[1]), logits.shape).copy()
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: label among the top ``k`` of each row."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C) logits or (N, k) ranked ids, got shape {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must be 1-D of length {scores.shape[0]}, got shape {labels.shape}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if np.issubdtype(scores.dtype, np.integer):          # ranked ids, best first
        if scores.shape[1] < k:
            raise ValueError(f"top-{k} accuracy needs at least {k} ranked ids per row, "
                             f"got {scores.shape[1]}")
        ids = scores[:, :k]
    elif k == 1:
        ids = scores.argmax(axis=1)[:, None]             # argmax: ties to the lower id, as topk_ids
    else:
        # with k >= C every class is in the top k: accuracy 1 by definition
        ids = topk_ids(scores, min(k, scores.shape[1]))
    return (ids == labels[:, None]).any(axis=1)


def topk_accuracy(logits_or_ids: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction (0..1) of rows whose label is among the top ``k``.

    Parameters: logits_or_ids: float (N, C) scores, or int (N, >=k) class ids
    ranked best first; labels (N,) int; k >= 1 (for scores, k >= C gives 1.0).
    Returns: the fraction as a float; NaN when N == 0.
    """
    hits = _hits(logits_or_ids, labels, k)
    return float(hits.mean()) if hits.size else float("nan")


def accuracies(logits_or_ids: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5),
               percent: bool = False, ndigits: Optional[int] = None) -> Dict[str, object]:
    """{'n': N, 'top1': ..., 'top5': ...} for each k in ``ks``.

    Parameters: as ``topk_accuracy``; percent: scale to 0..100;
    ndigits: round each value (None: not rounded).
    Returns: a dict; accuracies are None when N == 0.
    """
    n = int(np.asarray(labels).shape[0]) if np.ndim(labels) else 0
    out: Dict[str, object] = {"n": n}
    for k in ks:
        if n == 0:
            out[f"top{k}"] = None
            continue
        acc = topk_accuracy(logits_or_ids, labels, k) * (100.0 if percent else 1.0)
        out[f"top{k}"] = acc if ndigits is None else round(acc, ndigits)
    return out


def mean_ci95(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, half-width of the 95% interval) of per-episode / per-seed
    accuracies: 1.96 x sample std / sqrt(n), as few-shot papers report
    (0 for a single value; NaN for none)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(1.96 * v.std(ddof=1) / np.sqrt(v.size))
