"""The cascade's heads, built from the configuration in one place: LP++ fitted as
train.sh fits it (the validation report's simulated setup refits it the same
way), InMaP fitted transductively as test.sh fits it, the trained LP++ heads
and the ConvNeXt-V2 dog head loaded from train.sh's outputs.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np


def fit_lpp(lcfg, features: np.ndarray, labels: np.ndarray, text: np.ndarray,
            val_features: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
            epochs: Optional[int] = None):
    """LP++ with the ``lpp`` section's settings (``epochs`` overrides), fitted.

    Parameters: features (N, D) shots; labels (N,) ids 0..C-1; text (C, D)
    class weights; val_features/val_labels choose the epoch (None: the last).
    Returns: the fitted LPPlusPlus head.
    """
    from ..heads import HEADS
    head = HEADS["lpp"].cls(text_weights=text, epochs=lcfg.epochs if epochs is None else epochs,
                            momentum=lcfg.momentum, alpha_every=lcfg.alpha_every,
                            alpha_scale=lcfg.alpha_scale, seed=lcfg.seed)
    if val_features is None or len(val_features) == 0:
        val_features = val_labels = None
    return head.fit(features, labels, val_features, val_labels)


def fit_inmap(icfg, features: np.ndarray, text: np.ndarray, snapshots: Sequence[int] = (), **override):
    """InMaP with the ``inmap`` section's settings (``override`` replaces some),
    fitted transductively on ``features`` (every image it will label).

    snapshots: iteration counts whose proxies are kept (``logits(x, at_iter=n)``).
    Returns: the fitted InMaP head.
    """
    from ..heads import HEADS
    p = dataclasses.replace(icfg, **override)
    head = HEADS["inmap"].cls(text_weights=text, lr=p.lr, iters=p.iters, iters_sinkhorn=p.iters_sinkhorn,
                              tau_t=p.tau_t, tau_i=p.tau_i, alpha=p.alpha, gamma=p.gamma,
                              snapshots=tuple(snapshots), progress=True)
    return head.fit(features)


def load_lpp(manifest, key: str):
    """The LP++ head train.sh wrote for backbone ``key``."""
    from ..heads import HEADS
    return HEADS["lpp"].cls().load(manifest["outputs"][f"lpp_{key}"]["path"])


class DogHead:
    """The trained ConvNeXt-V2 dog head: top-k class ids per image path.

    The model is loaded on first use; each image is predicted once per
    process (later calls read the answers back), in batches.
    """

    def __init__(self, weights: str, head_path: str, k: int, batch_size: int):
        self.weights, self.head_path, self.k, self.batch_size = weights, head_path, int(k), int(batch_size)
        self.model, self.known = None, {}

    @classmethod
    def from_manifest(cls, cfg, manifest, k: int) -> "DogHead":
        return cls(cfg.dog_head.weights, manifest["outputs"]["dog_head"]["path"], k, cfg.dog_head.batch_size)

    def topk(self, paths: Sequence[str]) -> List[Optional[np.ndarray]]:
        """Per path: (k,) class ids, best first, or None where ConvNeXt could not read it."""
        from .. import finetune
        missing = [p for p in dict.fromkeys(paths) if p not in self.known]
        if missing:
            if self.model is None:
                self.model = finetune.load_finetuned(self.weights, self.head_path)
            kept, top, _ = finetune.predict(self.model, missing, k=self.k, batch_size=self.batch_size,
                                            verbose=len(missing) > self.batch_size)
            got: Dict[str, np.ndarray] = dict(zip(kept, top))
            for p in missing:
                self.known[p] = got.get(p)
        return [self.known[p] for p in paths]
