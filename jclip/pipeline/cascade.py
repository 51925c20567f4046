"""The contest cascade: routing, mixing, the dog-head substitution and the
fallback for unreadable images, in one ``Cascade.predict`` that test.sh and
the validation report (trained and simulated setups) all call.

Stages (SPEC section 2, settings in the configuration's ``cascade`` section):
  1. InMaP over all classes on each CLIP backbone, logits mixed (0.5/0.5);
     top-1 unseen (id >= 374) -> InMaP's top-5.
  2. else LP++ over the seen classes, logits mixed (0.6/0.4);
     top-1 not a dog (outside 244-373) -> LP++'s top-5.
  3. else the ConvNeXt-V2 dog head's top-5 (+244); where ConvNeXt cannot read
     an image CLIP could, LP++'s answer stands (stage ``lpp-fallback``).
An image no backbone could decode still gets an answer: the five classes the
cascade chose most often as top-1 on the other images (the best guess of the
test set's class prior; ties to the lower id), stage ``unreadable``.
"""
from dataclasses import dataclass, replace
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

STAGES = ("inmap", "lpp", "dog", "lpp-fallback", "unreadable")


def fallback_ids(top1: Sequence[int], num_classes: int, k: int) -> List[int]:
    """The k most frequent top-1 ids (ties to the lower id), padded with the
    lowest unused ids."""
    counts = np.bincount(np.asarray(top1, np.int64), minlength=num_classes)
    order = [int(i) for i in np.lexsort((np.arange(num_classes), -counts)) if counts[i] > 0][:k]
    return order + [i for i in range(num_classes) if i not in order][:k - len(order)]


def class_masks(num_classes: int, num_seen: int, dog_range: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """(unseen (num_classes,), dog (num_seen,)) boolean masks of the routing rules:
    InMaP answers when its top-1 is an unseen class (id >= num_seen), the dog
    head when LP++'s top-1 is in ``dog_range`` [lo, hi]."""
    ids = np.arange(num_seen)
    return np.arange(num_classes) >= int(num_seen), (ids >= int(dog_range[0])) & (ids <= int(dog_range[1]))


def mixed(logits: Mapping[str, np.ndarray], mix: Mapping[str, float]) -> np.ndarray:
    """Logits of the backbones in ``mix`` ({key: weight}) summed with those weights."""
    from ..heads import combine
    return combine([logits[b] for b in mix], list(mix.values()))


@dataclass(frozen=True)
class Prediction:
    """ids: (N, k) class ids, best first; stage: (N,) the stage that answered
    (one of STAGES)."""
    ids: np.ndarray
    stage: np.ndarray


@dataclass(frozen=True)
class Cascade:
    """InMaP -> LP++ -> dog head, on per-backbone features.

    inmap, lpp: {backbone key: fitted head with ``logits(features)``};
    inmap_mix, lpp_mix: {key: weight}; unseen: (C,) bool over InMaP's classes,
    the classes InMaP answers for; dog: (C_seen,) bool over the seen classes,
    the classes the dog head answers for; k: ids per image; dog_head: has
    ``topk(paths) -> [ids or None]`` (None: LP++ answers for the dogs too);
    lpp_classes: the seen class ids LP++'s columns stand for (None: all of
    them, in order), e.g. when classes are held out as unseen; inmap_at: InMaP's logits after that many iterations
    (a snapshot its heads kept; None: after all of them).
    """
    inmap: Mapping[str, object]
    lpp: Mapping[str, object]
    inmap_mix: Mapping[str, float]
    lpp_mix: Mapping[str, float]
    unseen: np.ndarray
    dog: np.ndarray
    k: int
    dog_head: Optional[object] = None
    lpp_classes: Optional[np.ndarray] = None
    inmap_at: Optional[int] = None

    @classmethod
    def from_config(cls, cfg, inmap, lpp, num_classes: int, num_seen: int, dog_head=None) -> "Cascade":
        """The cascade the configuration's ``cascade`` section describes."""
        casc = cfg.cascade
        unseen, dog = class_masks(num_classes, num_seen, casc.dog_range)
        return cls(inmap, lpp, dict(casc.inmap_mix), dict(casc.lpp_mix), unseen, dog, casc.topk, dog_head)

    def replace(self, **changes) -> "Cascade":
        """A copy with some fields changed (other mixing weights, other heads)."""
        return replace(self, **changes)

    def inmap_logits(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, C) InMaP logits mixed over the backbones."""
        at = {} if self.inmap_at is None else {"at_iter": self.inmap_at}
        return mixed({key: self.inmap[key].logits(features[key], **at) for key in self.inmap_mix},
                     self.inmap_mix)

    def lpp_logits(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, C_seen) LP++ logits mixed over the backbones; classes LP++ does not
        know (not in lpp_classes) are -inf."""
        mix = mixed({key: self.lpp[key].logits(features[key]) for key in self.lpp_mix}, self.lpp_mix)
        if self.lpp_classes is None:
            return mix
        out = np.full((mix.shape[0], len(self.dog)), -np.inf)
        out[:, self.lpp_classes] = mix
        return out

    def predict(self, features: Mapping[str, np.ndarray], paths: Sequence[str],
                readable: Optional[np.ndarray] = None) -> Prediction:
        """Each image's top-k and the stage that answered.

        Parameters: features: {backbone key: (N, D)}; paths: the N image files
        (the dog head reads them); readable: (N,) bool, False for images no
        backbone could decode (their feature rows are ignored; default all readable).
        Returns: a Prediction over all N images.
        """
        from ..metrics import topk_ids
        n = len(paths)
        readable = np.ones(n, bool) if readable is None else np.asarray(readable, bool)
        rows = np.flatnonzero(readable)
        ids = np.zeros((n, self.k), np.int64)
        stage = np.full(n, "unreadable", dtype=object)
        if rows.size:
            feats = {key: np.asarray(f)[rows] for key, f in features.items()} if rows.size < n else features
            top_i = topk_ids(self.inmap_logits(feats), self.k)
            top_l = topk_ids(self.lpp_logits(feats), self.k)
            st = np.where(self.unseen[top_i[:, 0]], "inmap",
                          np.where(self.dog[top_l[:, 0]], "dog", "lpp")).astype(object)
            ids[rows] = np.where((st == "inmap")[:, None], top_i, top_l)
            stage[rows] = st
            self._substitute_dog(ids, stage, paths)
        if rows.size < n:
            ids[~readable] = fallback_ids(ids[rows, 0], len(self.unseen), self.k)
        return Prediction(ids, stage.astype(str))

    def _substitute_dog(self, ids: np.ndarray, stage: np.ndarray, paths: Sequence[str]) -> None:
        """The dog head's top-k where LP++ named a dog (in place)."""
        rows = np.flatnonzero(stage == "dog")
        if not rows.size:
            return
        answers = (self.dog_head.topk([paths[i] for i in rows]) if self.dog_head is not None
                   else [None] * rows.size)
        for i, answer in zip(rows, answers):
            if answer is None:      # ConvNeXt could not read what CLIP could (or no dog head)
                stage[i] = "lpp-fallback"
            else:
                ids[i] = answer
