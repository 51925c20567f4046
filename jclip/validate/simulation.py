"""The two setups the report measures, each a ``pipeline.cascade.Cascade``.

trained    the heads train.sh wrote, run as test.sh runs them: InMaP over the
           test class list (unseen classes included) fitted on the validation
           images, LP++ and the dog head from out/.  Every validation image is
           of a seen class, so an image sent to InMaP is a routing error.
simulated  unseen classes have no labelled images, so a seeded subset of the
           non-dog seen classes is held out: LP++ is refit (as train.sh fits
           it) on the 4-shot images of the other classes, InMaP runs over all
           seen classes, and InMaP answers when its top-1 is a held-out class.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.contest import ContestFormatError
from ..pipeline.cascade import Cascade
from ..pipeline.config import Config
from ..pipeline.heads import fit_inmap, fit_seen, fit_unseen, inmap_snapshot, load_seen, unseen_head
from ..pipeline.stages import StageHead
from .data import ValData, ValLists

DEFAULT_UNSEEN = 29      # the B set's unseen classes, when there is no test class list


@dataclass(frozen=True)
class Holdout:
    """The seen classes held out as unseen: ids (sorted), mask (C,), the seed and
    a note when their number is not the test set's."""
    classes: np.ndarray
    held: np.ndarray
    seed: int
    note: Optional[str]


def holdout_classes(num_classes: int, dog: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded, sorted subset of ``count`` class ids outside the ``dog`` mask."""
    candidates = np.flatnonzero(~dog)
    if not 1 <= count <= len(candidates) - 1:
        raise ContestFormatError(f"--holdout {count}: need 1..{len(candidates) - 1} "
                                 f"(there are {len(candidates)} non-dog seen classes)")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, count, replace=False))


def choose_holdout(lists: ValLists, holdout: Optional[int] = None, seed: int = 1) -> Holdout:
    """The held-out classes: ``holdout`` of them (default as many as the test set's
    unseen classes, at most half of the non-dog classes), drawn with ``seed``
    from the classes neither in the dog domain nor routed to the dog head."""
    n_unseen = len(lists.test_names) - len(lists.names) if lists.test_names else DEFAULT_UNSEEN
    note = None
    candidates = ~lists.dog_truth & ~lists.dog
    if holdout is None:
        holdout = min(max(n_unseen, 1), max(1, int(candidates.sum()) // 2))
        if holdout != n_unseen:
            note = (f"{holdout} classes held out (half of the {int(candidates.sum())} "
                    f"non-dog classes; the test set has {n_unseen} unseen)")
    classes = holdout_classes(len(lists.names), ~candidates, int(holdout), int(seed))
    held = np.zeros(len(lists.names), bool)
    held[classes] = True
    return Holdout(classes, held, int(seed), note)


def params_of(cfg: Config) -> dict:
    """The cascade's free choices, as the sweep varies them."""
    i = cfg.inmap
    return {"templates": cfg.templates, "lpp_epochs": int(cfg.lpp.epochs),
            "tau_t": float(i.tau_t), "tau_i": float(i.tau_i), "iters": int(i.iters),
            "inmap_mix": dict(cfg.cascade.inmap_mix), "lpp_mix": dict(cfg.cascade.lpp_mix),
            "unseen": StageHead.of(cfg.stages.unseen), "seen": StageHead.of(cfg.stages.seen)}


def apply_params(cfg: Config, p: dict) -> Config:
    """A copy of ``cfg`` with the sweep's choices ``p`` (validated)."""
    stages = {f"stages.{s}": p[s].to_json() for s in ("unseen", "seen")      # written only when changed
              if p[s] != StageHead.of(getattr(cfg.stages, s))}
    return cfg.with_values({"templates": p["templates"], "lpp.epochs": int(p["lpp_epochs"]),
                            "inmap.tau_t": p["tau_t"], "inmap.tau_i": p["tau_i"],
                            "inmap.iters": int(p["iters"]), "cascade.inmap_mix": dict(p["inmap_mix"]),
                            "cascade.lpp_mix": dict(p["lpp_mix"]), **stages})


def trained_cascade(d: ValData) -> Cascade:
    """The cascade test.sh would run, with InMaP fitted on the measured images."""
    names = d.test_names or d.names
    text = d.text_test or {k: d.text_seen[k][d.cfg.templates] for k in d.backbones}
    casc = d.cfg.cascade
    inmap = {k: fit_unseen(d.cfg, d.eval.x[k], text[k]) for k in casc.inmap_mix}
    lpp = {k: load_seen(d.cfg, d.manifest, k) for k in casc.lpp_mix}
    return Cascade.from_config(d.cfg, inmap, lpp, len(names), len(d.names), d.dog_head)


class Simulated:
    """The cascade with the held-out classes playing the unseen ones; heads
    memoised per setting so a sweep fits each LP++ / InMaP once."""

    def __init__(self, d: ValData, holdout: Holdout):
        self.d, self.h = d, holdout
        self.kept = np.flatnonzero(~holdout.held)
        self._lpp: Dict[tuple, object] = {}
        self._inmap: Dict[tuple, object] = {}
        self._unseen: Dict[tuple, object] = {}

    def lpp(self, key: str, templates: str, epochs: int, seen: Optional[StageHead] = None):
        """The seen head (LP++ unless ``seen``) refit without the held-out classes
        (columns: ``self.kept``)."""
        seen = seen or StageHead("lpp")
        memo = (key, templates, int(epochs), seen.key())
        if memo not in self._lpp:
            d = self.d
            remap = np.full(len(d.names), -1)
            remap[self.kept] = np.arange(len(self.kept))
            tr, sel = ~self.h.held[d.train.y], ~self.h.held[d.sel.y]
            self._lpp[memo] = fit_seen(d.cfg, d.train.x[key][tr], remap[d.train.y[tr]],
                                       d.text_seen[key][templates][self.kept],
                                       d.sel.x[key][sel], remap[d.sel.y[sel]], spec=seen, epochs=epochs)
        return self._lpp[memo]

    def inmap(self, key: str, templates: str, tau_t: float, tau_i: float, iters: int,
              all_iters: Sequence[int] = ()):
        """InMaP over the seen classes, fitted for ``iters`` iterations or more: one
        fit serves every count in ``all_iters`` (logits at_iter=iters)."""
        memo = (key, templates, float(tau_t), float(tau_i))
        head = self._inmap.get(memo)
        if head is None or int(iters) not in set(head.snapshots_) | {head.iters_}:
            d = self.d
            snaps = sorted({int(iters)} | {int(i) for i in all_iters})
            head = fit_inmap(d.cfg.inmap, d.eval.x[key], d.text_seen[key][templates], snaps,
                             tau_t=tau_t, tau_i=tau_i, iters=snaps[-1])
            self._inmap[memo] = head
        return head

    def unseen(self, key: str, p: dict, all_iters: Sequence[int] = ()):
        """The unseen head ``p["unseen"]`` over the seen classes; an InMaP start is
        the InMaP of ``p``'s settings after ``p["iters"]`` steps."""
        spec = p["unseen"]
        memo = (key, p["templates"], spec.key()) + \
            ((float(p["tau_t"]), float(p["tau_i"]), int(p["iters"])) if spec.init == "inmap" else ())
        if memo not in self._unseen:
            start = None
            if spec.init == "inmap":
                start = inmap_snapshot(self.inmap(key, p["templates"], p["tau_t"], p["tau_i"], p["iters"],
                                                  all_iters), int(p["iters"]))
            elif spec.init == "zeroshot":
                start = unseen_head(StageHead("zeroshot"), self.d.text_seen[key][p["templates"]])
            self._unseen[memo] = unseen_head(spec, self.d.text_seen[key][p["templates"]], start)
        return self._unseen[memo]

    def cascade(self, p: dict, all_iters: Sequence[int] = ()) -> Cascade:
        """The simulated cascade with the settings ``p`` (see params_of)."""
        d = self.d
        if p["unseen"].head == "inmap":
            inmap = {k: self.inmap(k, p["templates"], p["tau_t"], p["tau_i"], p["iters"], all_iters)
                     for k in p["inmap_mix"]}
        else:
            inmap = {k: self.unseen(k, p, all_iters) for k in p["inmap_mix"]}
        lpp = {k: self.lpp(k, p["templates"], p["lpp_epochs"], p["seen"]) for k in p["lpp_mix"]}
        return Cascade(inmap, lpp, dict(p["inmap_mix"]), dict(p["lpp_mix"]), self.h.held, d.dog,
                       d.k, d.dog_head, lpp_classes=self.kept,
                       inmap_at=int(p["iters"]) if p["unseen"].head == "inmap" else None)

    def run(self, p: dict, all_iters: Sequence[int] = ()):
        """(ids, stage) of the simulated cascade on the measured images."""
        pred = self.cascade(p, all_iters).predict(self.d.eval.x, self.d.eval_abs)
        return pred.ids, pred.stage


def held_out_names(d: ValLists, h: Holdout) -> List[str]:
    return [d.names[c] for c in h.classes]
