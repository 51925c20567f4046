"""A fitted head that starts another (TransCLIP, ZLaP ``init=``), and its file.

A start head gives either class **prototypes** (C, D) - InMaP's proxies,
ZeroShot's text weights - or, for any other head, **probabilities**
softmax(logits(x)) of the features being labelled.  A head saved with a
start head carries it inside its own file (header ``start_head``, arrays
under ``start/``), so ``load`` needs nothing else.
"""
from typing import Optional

import numpy as np

from .base import Head, as_features, softmax
from .inmap import InMaP
from .zeroshot import ZeroShot

def start_prototypes(init: Head) -> Optional[np.ndarray]:
    """The (C, D) prototypes a fitted start head offers, or None (use its probabilities)."""
    if isinstance(init, InMaP):
        return init.proxies_
    if isinstance(init, ZeroShot):
        return init.text_weights_
    return None


def check_start(init, num_classes: int, dim: int, owner: str) -> Optional[np.ndarray]:
    """Check ``init`` is a fitted head over ``num_classes`` classes.

    Returns: its prototypes as unit rows (C, D), or None when it starts by
    probabilities.  Raises ValueError naming ``owner`` and what is wrong.
    """
    if not isinstance(init, Head):
        raise ValueError(f"{owner}: init must be a fitted jclip head (InMaP, LPPlusPlus, "
                         f"ZeroShot, ...), got {type(init).__name__}")
    try:
        init._check_fitted()
    except RuntimeError:
        raise ValueError(f"{owner}: init {type(init).__name__} is not fitted; fit it first") from None
    protos = start_prototypes(init)
    if protos is None:
        return None
    protos = as_features(protos, f"{owner} init prototypes", dim=dim)
    if protos.shape[0] != num_classes:
        raise ValueError(f"{owner}: init has {protos.shape[0]} classes, text_weights {num_classes}")
    return protos


def start_probabilities(init: Head, x: np.ndarray, num_classes: int, owner: str) -> np.ndarray:
    """softmax(init.logits(x)) as (N, C) in x's dtype; ValueError for a class-count mismatch."""
    p = np.asarray(init.logits(x), dtype=x.dtype)
    if p.shape != (x.shape[0], num_classes):
        raise ValueError(f"{owner}: init gives {p.shape[1]} classes, text_weights {num_classes}")
    return softmax(p.copy())
