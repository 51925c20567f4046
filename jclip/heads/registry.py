"""HEADS: every head by method name, with what a caller needs to build and use it.

    from jclip.heads import HEADS
    spec = HEADS["lpp"]
    head = spec.cls(text_weights=t, epochs=300).fit(x, y, vx, vy)

Defaults live only in the classes' signatures (``spec.defaults()`` reads
them).  CoOp, CoCoOp and clip_finetune (``jclip.finetune.contrastive``) need
Jittor; their classes are imported on first use of ``spec.cls``, so importing ``jclip.heads`` stays numpy-only.
"""
import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from .head_file import FileFormatError, check_file, read_raw


@dataclass(frozen=True)
class HeadSpec:
    """One registered head.

    name: the method name (``fewshot --methods``); label: for tables and
    plots; module / class_name: where the class lives; needs_text: the
    constructor takes ``text_weights`` (C, D); needs_model: it takes the CLIP
    ``model`` and ``class_names``; transductive: fit on the unlabelled
    features it will label; transfers: scores classes it never trained on
    (text-defined heads through new ``text_weights``, prompt learners through
    ``logits(x, class_names=...)``); no_val_params: hyper-parameters to use
    when no validation split exists.
    """

    name: str
    label: str
    module: str
    class_name: str
    needs_text: bool = False
    needs_model: bool = False
    needs_images: bool = False
    transductive: bool = False
    transfers: bool = False
    no_val_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        """The head class (imports its module on first use)."""
        return getattr(importlib.import_module(self.module, __package__), self.class_name)

    def param_names(self):
        """The constructor's hyper-parameter names."""
        return self.cls.param_names()

    def defaults(self) -> Dict[str, Any]:
        """{hyper-parameter: default} from the class signature."""
        return self.cls.param_defaults()


HEADS: Dict[str, HeadSpec] = {s.name: s for s in (
    HeadSpec("zeroshot", "Zero-shot", ".zeroshot", "ZeroShot", needs_text=True, transfers=True),
    HeadSpec("linear_probe", "Linear probe", ".linear_probe", "LinearProbe",
             no_val_params={"Cs": (1.0,)}),
    HeadSpec("tip_adapter", "Tip-Adapter", ".tip_adapter", "TipAdapter", needs_text=True),
    HeadSpec("tip_adapter_f", "Tip-Adapter-F", ".tip_adapter", "TipAdapterF", needs_text=True),
    HeadSpec("lpp", "LP++", ".lpp", "LPPlusPlus", needs_text=True),
    HeadSpec("inmap", "InMaP", ".inmap", "InMaP", needs_text=True, transductive=True),
    # TransCLIP and ZLaP transduce over the features logits() is given, so they
    # fit on shots (or nothing) like any few-shot head
    HeadSpec("transclip", "TransCLIP", ".transclip", "TransCLIP", needs_text=True),
    HeadSpec("transclip_zs", "TransCLIP-ZS", ".transclip", "TransCLIPZeroShot", needs_text=True,
             transfers=True),
    HeadSpec("zlap", "ZLaP", ".zlap", "ZLaP", needs_text=True, transfers=True),
    HeadSpec("gda", "GDA", ".gda", "GDA", needs_text=True),
    HeadSpec("ape", "APE", ".ape", "APE", needs_text=True),
    HeadSpec("proker", "ProKeR", ".proker", "ProKeR", needs_text=True),
    HeadSpec("coop", "CoOp", ".coop", "CoOp", needs_model=True, transfers=True),
    HeadSpec("cocoop", "CoCoOp", ".cocoop", "CoCoOp", needs_model=True, transfers=True),
    HeadSpec("clip_finetune", "CLIP fine-tune", "..finetune.contrastive", "ClipFinetune",
             needs_model=True, needs_images=True, transfers=True),
)}


def spec_of(head_class_name: str) -> HeadSpec:
    """The spec whose class is called ``head_class_name`` (as in a head file)."""
    for spec in HEADS.values():
        if spec.class_name == head_class_name:
            return spec
    raise KeyError(head_class_name)


def head_class(name: str) -> type:
    """The head class called ``name`` (as a file names it); KeyError when none."""
    return spec_of(name).cls


def check_head_file(path) -> str:
    """Check a head file against its class's whole schema without building
    the head (no model needed); returns the class name.  FileFormatError
    (a ValueError) naming the file and the key."""
    if str(path).endswith(".safetensors"):          # ClipFinetune's container
        cls = HEADS["clip_finetune"].cls
    else:
        name = read_raw(path)[0]["head"]
        try:
            cls = head_class(name)
        except KeyError:
            raise FileFormatError(path, "head", f"unknown head class {name!r}") from None
    check_file(cls, path, head_class)
    return cls.__name__


def load_head(path, model: Optional[Any] = None):
    """Any head saved by ``save``, as the class named in its file.

    Parameters: path: the file; model: the CLIP model, for CoOp / CoCoOp
    (checked against the backbone they were trained on).
    Returns: the fitted head.  Raises ValueError naming the file when it is
    not a head file or names an unknown head.
    """
    if str(path).endswith(".safetensors"):          # ClipFinetune's container
        spec = HEADS["clip_finetune"]
    else:
        meta, _ = read_raw(path)
        try:
            spec = spec_of(meta["head"])
        except KeyError:
            raise FileFormatError(path, "head", f"unknown head class {meta['head']!r}") from None
    head = spec.cls(model, None) if spec.needs_model else spec.cls()
    return head.load(path)
