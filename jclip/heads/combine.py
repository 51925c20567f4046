"""Mixing heads across backbones: weighted sums of logits or probabilities.

The cascade mixes ViT-B/32 and RN101 heads, e.g. LP++ 0.6 ViT + 0.4 RN.
"""
from typing import Optional, Sequence

import numpy as np

from .base import softmax


def combine(outputs: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None,
            mode: str = "logits") -> np.ndarray:
    """Weighted sum of several heads' outputs.

    Parameters: outputs: (N, C) arrays of one shape; weights: one per output
    (default equal; used as given, not renormalised); mode: 'logits' sums the
    outputs, 'probs' their softmax.
    Returns: (N, C) float64.
    """
    outputs = [np.asarray(o, dtype=np.float64) for o in outputs]
    if not outputs:
        raise ValueError("nothing to combine")
    shape = outputs[0].shape
    if len(shape) != 2 or any(o.shape != shape for o in outputs):
        raise ValueError(f"outputs must all be (N, C) of one shape, got "
                         f"{[o.shape for o in outputs]}")
    if weights is None:
        weights = [1.0 / len(outputs)] * len(outputs)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(outputs),) or not np.isfinite(weights).all():
        raise ValueError(f"need {len(outputs)} finite weights, got {weights.tolist()}")
    if mode not in ("logits", "probs"):
        raise ValueError(f"mode must be 'logits' or 'probs', got {mode!r}")
    for o in outputs:
        if not np.isfinite(o).all():
            raise ValueError("outputs contain NaN or infinite values")
    if mode == "probs":
        outputs = [softmax(o.copy()) for o in outputs]
    return sum(w * o for w, o in zip(weights, outputs))
