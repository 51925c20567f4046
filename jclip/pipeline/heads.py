"""The cascade's heads, built from the configuration in one place: each stage's
head (``stages`` section: InMaP and LP++ by default) fitted as train.sh / test.sh
fit it (the validation report's simulated setup refits it the same way), the
trained seen-stage heads and the ConvNeXt-V2 dog head loaded from train.sh's outputs.

The unseen stage's head runs in test.sh, transductively on the test images; the
seen stage's is fitted on the shots in train.sh, saved, and loaded by test.sh
(which heads may serve which stage: ``stages``).  A start head (``init``) is
fitted with the same data as the stage's head, InMaP and LP++ with their
sections' settings, any other with its defaults.
"""
import copy
import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from .stages import TAKES_INIT, StageHead, tuples


def _val(val_features, val_labels):
    if val_features is None or len(val_features) == 0:
        return None, None
    return val_features, val_labels


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


# ---------------------------------------------------------------- stage heads

def unseen_head(spec: StageHead, text: np.ndarray, start=None):
    """The unseen stage's head ``spec`` over (C, D) ``text``, fitted (no shots),
    on ``start`` (its fitted ``init`` head, or None).  Not for InMaP itself (fit_inmap)."""
    from ..heads import HEADS
    params = tuples(spec.params)
    if spec.head == "zeroshot":
        return HEADS["zeroshot"].cls(text_weights=text, **params).fit()
    return HEADS[spec.head].cls(text_weights=text, init=start, **params).fit()


def inmap_snapshot(head, iters: int):
    """An InMaP head as it was after ``iters`` steps (a kept snapshot): a start for
    TransCLIP / ZLaP whose proxies are those ``logits(x, at_iter=iters)`` uses."""
    if iters == head.iters_:
        return head
    view = copy.copy(head)
    view.proxies_, view.iters_, view.snapshots_ = head.snapshots_[iters], iters, {}
    return view


def fit_unseen(cfg, features: np.ndarray, text: np.ndarray, spec: Optional[StageHead] = None):
    """The unseen stage's head (``stages.unseen`` unless ``spec``), fitted transductively
    on ``features`` (every image it will label); InMaP with the ``inmap`` section."""
    from ..heads import HEADS
    spec = spec or StageHead.of(cfg.stages.unseen)
    if spec.head == "inmap":
        return fit_inmap(cfg.inmap, features, text)
    start = None
    if spec.init == "inmap":
        start = fit_inmap(cfg.inmap, features, text)
    elif spec.init == "zeroshot":
        start = HEADS["zeroshot"].cls(text_weights=text).fit()
    return unseen_head(spec, text, start)


def _fit_plain(name: str, lcfg, features, labels, text, val_features, val_labels, epochs=None):
    """A seen head without a start: LP++ with its section, any other with its defaults."""
    from ..heads import HEADS
    if name == "lpp":
        return fit_lpp(lcfg, features, labels, text, val_features, val_labels, epochs)
    vx, vy = _val(val_features, val_labels)
    return HEADS[name].cls(text_weights=text).fit(features, labels, vx, vy)


def fit_seen(cfg, features: np.ndarray, labels: np.ndarray, text: np.ndarray,
             val_features: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
             spec: Optional[StageHead] = None, epochs: Optional[int] = None):
    """The seen stage's head (``stages.seen`` unless ``spec``) fitted on the shots,
    validation choices on ``val_*``; LP++ (as head or start) with the ``lpp``
    section (``epochs`` overrides its epochs)."""
    from ..heads import HEADS
    spec = spec or StageHead.of(cfg.stages.seen)
    if spec.init is None and not spec.params:
        return _fit_plain(spec.head, cfg.lpp, features, labels, text, val_features, val_labels, epochs)
    start = None if spec.init is None else _fit_plain(spec.init, cfg.lpp, features, labels, text,
                                                      val_features, val_labels, epochs)
    kw = {"init": start} if spec.head in TAKES_INIT else {}
    vx, vy = _val(val_features, val_labels)
    return HEADS[spec.head].cls(text_weights=text, **kw, **tuples(spec.params)).fit(features, labels, vx, vy)


def seen_output(cfg, key: str) -> str:
    """The manifest ``outputs`` name (and file stem) of the seen head of backbone
    ``key``: ``lpp_vit`` for LP++, ``gda_vit`` for GDA, ..."""
    return f"{cfg.stages.seen.head}_{key}"


def check_seen(cfg, manifest, key: str) -> str:
    """The manifest ``outputs`` name of the seen head of backbone ``key``, or
    ContestFormatError when train.sh trained another seen head (a check that
    reads no head file: commands make it before any model is loaded)."""
    from ..data.contest import ContestFormatError
    name = seen_output(cfg, key)
    trained = manifest.get("seen_head", StageHead("lpp").to_json())     # manifests before stages: LP++
    if trained != StageHead.of(cfg.stages.seen).to_json():
        raise ContestFormatError(f"{cfg.path}: `stages.seen` differs from the seen head the heads in "
                                 f"{cfg.out_dir} were trained with ({StageHead(**trained).describe()}); "
                                 f"run train.sh with this configuration first")
    if name not in manifest.get("outputs", {}):
        raise ContestFormatError(f"{cfg.path}: stages.seen is {cfg.stages.seen.head}, but train.sh wrote no "
                                 f"{name} head; run train.sh with this configuration first")
    return name


def load_seen(cfg, manifest, key: str):
    """The seen stage's head train.sh wrote for backbone ``key`` (``check_seen`` first)."""
    from ..heads import load_head
    name = check_seen(cfg, manifest, key)
    if cfg.stages.seen.head == "lpp":
        return load_lpp(manifest, key)
    return load_head(manifest["outputs"][name]["path"])


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
