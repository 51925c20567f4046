"""Which head can serve which cascade stage: the rules the configuration's
``stages`` section and the sweep's ``unseen_heads`` / ``seen_heads`` are checked
against (no numpy, no heads imported while the stages are the defaults).

The **unseen** stage labels every test class and has no shots of the unseen
ones, so its head needs none (InMaP, TransCLIP-ZS, ZLaP, zero-shot).  The
**seen** stage's head is fitted on the shots by train.sh and saved for test.sh
(LP++, GDA, APE, ProKeR, Tip-Adapter, TransCLIP-FS, zero-shot).  ``init`` names
the head that starts a TransCLIP or ZLaP.
"""
import json
from typing import Any, Dict, NamedTuple, Optional

DEFAULT_HEADS = {"unseen": "inmap", "seen": "lpp"}
# heads that label classes they have no shots of (the unseen stage has none)
UNSEEN_HEADS = ("inmap", "transclip", "transclip_zs", "zlap", "zeroshot")
# heads fitted on the shots by train.sh and saved for test.sh
SEEN_HEADS = ("lpp", "gda", "ape", "proker", "tip_adapter", "transclip", "zeroshot")
# heads that take a start head (``init``), and the starts each stage can fit
TAKES_INIT = ("transclip", "transclip_zs", "zlap")
STARTS = {"unseen": ("inmap", "zeroshot"), "seen": ("lpp", "gda", "ape", "proker", "tip_adapter", "zeroshot")}
PROTOTYPE_STARTS = ("inmap", "zeroshot")        # ZLaP's class nodes must be prototypes
# constructor arguments the pipeline fills in; the stage's ``params`` cannot set them
PROVIDED = ("text_weights", "init", "snapshots", "progress", "model", "class_names", "num_classes")
# heads whose settings are a section of their own
SECTION_OF = {"inmap": "inmap", "lpp": "lpp"}


class StageHead(NamedTuple):
    """One stage's head: method name, start (a method name or None), hyper-parameters."""
    head: str
    init: Optional[str] = None
    params: Dict[str, Any] = {}

    @classmethod
    def of(cls, section) -> "StageHead":
        """From a ``stages.unseen`` / ``stages.seen`` section."""
        return cls(section.head, section.init, dict(section.params))

    @classmethod
    def parse(cls, text: str) -> "StageHead":
        """``"transclip on inmap"`` -> StageHead("transclip", "inmap") (a sweep candidate)."""
        head, on, init = text.strip().partition(" on ")
        return cls(head.strip(), init.strip() if on else None)

    def describe(self) -> str:
        return self.head + (f" on {self.init}" if self.init else "")

    def key(self) -> tuple:
        """A hashable form (memo keys)."""
        return self.head, self.init, json.dumps(self.params, sort_keys=True)

    def to_json(self) -> Dict[str, Any]:
        return {"head": self.head, "init": self.init, "params": dict(self.params)}


def _close(name: str, valid) -> str:
    import difflib
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f" (one of: {', '.join(valid)})"


def check_stage(stage: str, spec: StageHead, key: str) -> None:
    """ValueError ``<key>.<field>: <what is wrong>`` unless ``spec`` can serve ``stage``
    ("unseen" or "seen"); its ``params`` go through the head's ``check_params``."""
    heads = UNSEEN_HEADS if stage == "unseen" else SEEN_HEADS
    if spec.head not in heads:
        from ..heads import HEADS
        if spec.head not in HEADS:
            raise ValueError(f"{key}.head: unknown head {spec.head!r}{_close(spec.head, heads)}")
        why = ("it needs shots of every class and the unseen classes have none" if stage == "unseen"
               else "it is not fitted on the shots by train.sh")
        raise ValueError(f"{key}.head: {spec.head!r} cannot serve the {stage} stage ({why}); "
                         f"one of: {', '.join(heads)}")
    if spec.init is not None:
        if spec.head not in TAKES_INIT:
            raise ValueError(f"{key}.init: {spec.head!r} takes no start head (heads that take one in "
                             f"the {stage} stage: {', '.join(h for h in TAKES_INIT if h in heads)}); use null")
        starts = PROTOTYPE_STARTS if spec.head == "zlap" else STARTS[stage]
        if spec.init not in starts:
            raise ValueError(f"{key}.init: {spec.init!r} is not a valid start for {spec.head} in the "
                             f"{stage} stage; one of: {', '.join(starts)}")
    if spec.params:
        if spec.head in SECTION_OF:
            raise ValueError(f"{key}.params: {spec.head}'s settings are the `{SECTION_OF[spec.head]}` "
                             f"section; leave params empty")
        from ..heads import HEADS
        cls = HEADS[spec.head].cls
        names = [n for n in cls.param_names() if n not in PROVIDED]
        for name in spec.params:
            if name not in names:
                raise ValueError(f"{key}.params.{name}: {HEADS[spec.head].class_name} has no such "
                                 f"hyper-parameter{_close(name, names)}")
        try:
            cls(**tuples(spec.params)).check_params()
        except (ValueError, TypeError) as e:
            bad = [n for n in spec.params if str(e).startswith(n + " ")]
            raise ValueError(f"{key}.params{'.' + bad[0] if bad else ''}: {e}") from None


def check_stages(cfg) -> None:
    """Both stages' heads (``stages`` section) and the sweep's candidates; nothing is
    imported while they are the defaults.  Raises ValueError ``<key>: <what is wrong>``."""
    for stage in ("unseen", "seen"):
        spec = StageHead.of(getattr(cfg.stages, stage))
        if spec != StageHead(DEFAULT_HEADS[stage]):
            check_stage(stage, spec, f"stages.{stage}")
        for i, text in enumerate(getattr(cfg.sweep, f"{stage}_heads")):
            cand = StageHead.parse(text)
            if cand != StageHead(DEFAULT_HEADS[stage]):
                check_stage(stage, cand, f"sweep.{stage}_heads[{i}]")


def tuples(params: Dict[str, Any]) -> Dict[str, Any]:
    """JSON lists as tuples (sequence hyper-parameters are tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
