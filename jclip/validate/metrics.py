"""The report's measures: accuracy overall, per domain, per stage and per routing
group, the routing table, per-class rows, routing errors in words, and the
configuration's routing settings checked against the class list.
(Plain top-k accuracy is ``jclip.metrics``.)
"""
from typing import Dict, List, Optional

import numpy as np

from ..data.contest import domain_of
from ..metrics import accuracies, topk_accuracy
from .data import ValData, ValLists

STAGES = ("inmap", "lpp", "dog")
STAGE_NAMES = {"inmap": "InMaP", "lpp": "LP++", "dog": "dog head"}
ROUND = 6


def accuracy(ids: np.ndarray, y: np.ndarray) -> Dict[str, Optional[float]]:
    """{'n', 'top1', 'top5'} (fractions, 6 digits) of ranked ids (N, k) for labels y."""
    return accuracies(np.asarray(ids, np.int64), np.asarray(y), (1, 5), ndigits=ROUND)


def argmax_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 (6 digits) of logits (N, C)."""
    return round(topk_accuracy(logits, y, 1), ROUND)


def answered(stage: np.ndarray) -> np.ndarray:
    """The stage whose answer an image got: ``lpp-fallback`` (ConvNeXt could not
    read the image) is LP++'s answer."""
    return np.where(stage == "lpp-fallback", "lpp", stage)


def truth_groups(d: ValLists, y: np.ndarray, held: Optional[np.ndarray]) -> np.ndarray:
    """Per image: the routing group its true class belongs to (``held``: the
    simulated setup's held-out classes, None for the trained setup)."""
    if held is not None:
        return np.where(held[y], "held-out", np.where(d.dog_truth[y], "seen dog", "seen not-dog"))
    return np.where(d.dog_truth[y], "dog", "not-dog")


def measure(d: ValData, ids: np.ndarray, stage: np.ndarray, held: Optional[np.ndarray] = None) -> dict:
    """Accuracy overall, per domain, per stage, per routing group; the routing table."""
    y = d.eval.y
    groups = truth_groups(d, y, held)
    group_names = ("seen not-dog", "seen dog", "held-out") if held is not None else ("not-dog", "dog")
    domains = np.array([domain_of(d.names[c]) for c in y])
    return {"overall": accuracy(ids, y),
            "per_domain": {dom: accuracy(ids[domains == dom], y[domains == dom])
                           for dom in dict.fromkeys(domain_of(n) for n in d.names)
                           if (domains == dom).any()},
            "per_stage": {STAGE_NAMES[s]: accuracy(ids[stage == s], y[stage == s]) for s in STAGES},
            "per_group": {g: accuracy(ids[groups == g], y[groups == g]) for g in group_names},
            "routing": {"rows": list(group_names), "cols": [STAGE_NAMES[s] for s in STAGES],
                        "counts": [[int(((groups == g) & (stage == s)).sum()) for s in STAGES]
                                   for g in group_names]}}


def per_class_rows(d: ValData, ids: np.ndarray, setup: str, held: Optional[np.ndarray] = None) -> List[dict]:
    """One row per measured class: accuracy and the class most often taken for it."""
    y, rows = d.eval.y, []
    names = d.test_names or d.names
    for c in np.unique(y):
        m = y == c
        acc = accuracy(ids[m], y[m])
        wrong = ids[m, 0][ids[m, 0] != c]
        confused = int(np.bincount(wrong).argmax()) if wrong.size else None
        rows.append({"setup": setup, "class": int(c), "name": d.names[c], "domain": domain_of(d.names[c]),
                     "held_out": bool(held[c]) if held is not None else False,
                     "n": acc["n"], "top1": acc["top1"], "top5": acc["top5"],
                     "most_confused_with": names[confused] if confused is not None else ""})
    return rows


# (group, column of the routing table, what it means), per setup
_ERRORS = {
    True: (("seen not-dog", 0, "seen not-dog images went to InMaP, which named a held-out class"),
           ("seen dog", 0, "seen dog images went to InMaP"),
           ("seen not-dog", 2, "not-dog images went to the dog head"),
           ("seen dog", 1, "dog images did not reach the dog head: LP++ answered"),
           ("held-out", 1, "held-out images were kept by LP++ and never reached InMaP"),
           ("held-out", 2, "held-out images went to the dog head")),
    False: (("not-dog", 0, "not-dog images went to InMaP, which named an unseen class"),
            ("dog", 0, "dog images went to InMaP"),
            ("not-dog", 2, "not-dog images went to the dog head"),
            ("dog", 1, "dog images did not reach the dog head: LP++ answered")),
}


def routing_errors(result: dict, simulated: bool) -> List[str]:
    """Plain-language lines for the images that went to the wrong stage."""
    r = dict(zip(result["routing"]["rows"], result["routing"]["counts"]))
    lines = []
    for group, col, what in _ERRORS[simulated]:
        counts = r[group]
        n, total = counts[col], sum(counts)
        if total:
            lines.append(f"{n} of {total} ({100 * n / total:.1f}%) {what}")
    return lines


def config_warnings(d: ValLists) -> List[str]:
    """Routing settings that contradict the class list."""
    out = []
    lo, hi = d.cfg.cascade.dog_range
    dom = d.dog_domain
    if lo <= hi and lo < len(d.names):
        foreign = [n for n in d.names[lo:hi + 1] if domain_of(n) != dom]
        missing = [n for i, n in enumerate(d.names) if domain_of(n) == dom and not lo <= i <= hi]
        if foreign:
            out.append(f"cascade.dog_range [{lo}, {hi}] covers {len(foreign)} classes outside "
                       f"{dom}: {', '.join(foreign[:5])}")
        if missing:
            out.append(f"cascade.dog_range [{lo}, {hi}] leaves out {len(missing)} {dom} "
                       f"classes: {', '.join(missing[:5])}")
    else:
        out.append(f"cascade.dog_range [{lo}, {hi}] holds no class")
    return out
