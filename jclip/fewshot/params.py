"""Hyper-parameters of the heads from the command line, checked before any model loads.

    --set lpp.epochs=100 --set tip_adapter.beta_scale=5 --set coop.ctx_init='a photo of'

``--set METHOD.PARAM=VALUE`` (repeatable) reaches every hyper-parameter of
every head in ``HEADS``; the value is read as JSON when it parses (``100``,
``[1, 2]``, ``null``, ``true``), else kept as text.  The older per-method
flags (``--coop-epochs``, ``--lr``, ``--finetune-image-only``, ...) are
spelled-out forms of the same settings and go through the same path.  Each
method's settings are checked by its head's own ``check_params`` (an unknown
method or parameter, or a bad value, is one ``ParamError`` line naming the
option).  What the study itself provides (the text weights, the model, the
class names, ``--seeds``, ``--episode``) cannot be set.
"""
import argparse
import difflib
import json
from typing import Any, Dict, List, Sequence, Tuple

# constructor arguments the study fills in (not hyper-parameters a user sets)
PROVIDED = ("text_weights", "model", "class_names", "preprocess", "num_classes", "seed", "episode",
            "val_class_names")
PROMPT_LEARNERS = ("coop", "cocoop")

# flag (argparse dest) -> [(method, hyper-parameter)]; a store_true flag sets the value below
FLAGS: Dict[str, List[Tuple[str, str]]] = {
    "coop_epochs": [("coop", "epochs")], "cocoop_epochs": [("cocoop", "epochs")],
    "coop_batch_size": [("coop", "batch_size")], "cocoop_batch_size": [("cocoop", "batch_size")],
    "lr": [(m, "lr") for m in PROMPT_LEARNERS], "ctx_init": [(m, "ctx_init") for m in PROMPT_LEARNERS],
    "n_ctx": [(m, "n_ctx") for m in PROMPT_LEARNERS], "position": [(m, "position") for m in PROMPT_LEARNERS],
    "class_specific": [("coop", "class_specific")],
    "episodes_per_epoch": [(m, "episodes_per_epoch") for m in PROMPT_LEARNERS],
    "finetune_trainable": [("clip_finetune", "trainable")], "finetune_epochs": [("clip_finetune", "epochs")],
    "finetune_lr": [("clip_finetune", "lr")], "finetune_batch_size": [("clip_finetune", "batch_size")],
    "finetune_image_only": [("clip_finetune", "train_text")],
}
SWITCHES = {"class_specific": True, "finetune_image_only": False}   # store_true flag -> value set


class ParamError(ValueError):
    """A hyper-parameter option that cannot be used (one line naming it)."""


def add_param_arguments(parser: argparse.ArgumentParser) -> None:
    """--set, and the per-method flags (unset: the head class's default)."""
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                        help="a head's hyper-parameter, e.g. --set lpp.epochs=100 (repeatable; "
                             "every parameter of every method, see docs/heads.md)")
    pl = parser.add_argument_group("CoOp / CoCoOp (unset: the class default)")
    for m in PROMPT_LEARNERS:
        pl.add_argument(f"--{m}-epochs", type=int)
        pl.add_argument(f"--{m}-batch-size", type=int)
    pl.add_argument("--lr", type=float)
    pl.add_argument("--ctx-init", help="words that initialise the context ('' for random context)")
    pl.add_argument("--n-ctx", type=int, help="context length with random init")
    pl.add_argument("--class-specific", action="store_true", help="CoOp: one context per class")
    pl.add_argument("--position", choices=("end", "middle", "front"), help="where the class tokens go")
    ft = parser.add_argument_group("clip_finetune (unset: the class default)")
    ft.add_argument("--finetune-trainable", help="proj (default), last_blocks=N or all")
    ft.add_argument("--finetune-epochs", type=int)
    ft.add_argument("--finetune-lr", type=float)
    ft.add_argument("--finetune-batch-size", type=int)
    ft.add_argument("--finetune-image-only", action="store_true", help="keep the text tower frozen")


def _given(args: argparse.Namespace) -> List[Tuple[str, str, str, Any]]:
    """(option as typed, method, hyper-parameter, value) of every setting given."""
    out = []
    for dest, targets in FLAGS.items():
        value = getattr(args, dest, None)
        if dest in SWITCHES:
            if not value:
                continue
            value, option = SWITCHES[dest], f"--{dest.replace('_', '-')}"
        elif value is None:
            continue
        else:
            option = f"--{dest.replace('_', '-')} {value}"
        out += [(option, m, p, value) for m, p in targets]
    for item in args.set:
        key, eq, text = item.partition("=")
        method, dot, param = key.strip().partition(".")
        if not eq or not dot or not method or not param:
            raise ParamError(f"--set {item}: expected METHOD.PARAM=VALUE (e.g. lpp.epochs=100)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.append((f"--set {item}", method, param, value))
    return out


def _close(name: str, valid) -> str:
    """`` (did you mean `x`?)``, or the valid names."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f" (known: {', '.join(valid)})"


def method_params(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """{method: {hyper-parameter: value}} of the options given, each method's
    checked by its head (``check_params``; no model is loaded).

    Raises ParamError naming the option: an unknown method or parameter, one
    the study provides, or a value the head refuses.
    """
    from ..heads import HEADS
    params: Dict[str, Dict[str, Any]] = {}
    option_of: Dict[Tuple[str, str], str] = {}
    for option, method, param, value in _given(args):
        if method not in HEADS:
            raise ParamError(f"{option}: unknown method {method!r}{_close(method, HEADS)}")
        names = [n for n in HEADS[method].param_names() if n not in PROVIDED]
        if param in PROVIDED and param in HEADS[method].param_names():
            raise ParamError(f"{option}: {param} is set by the study, not by an option")
        if param not in names:
            raise ParamError(f"{option}: {HEADS[method].class_name} has no hyper-parameter "
                             f"{param!r}{_close(param, names)}")
        params.setdefault(method, {})[param] = value
        option_of[method, param] = option
    if not getattr(args, "no_progress", False):
        for method in PROMPT_LEARNERS + ("clip_finetune",):
            params.setdefault(method, {}).setdefault("progress", True)
    for method, given in params.items():
        check(method, given, option_of)
    return params


def check(method: str, given: Dict[str, Any], option_of: Dict[Tuple[str, str], str]) -> None:
    """``method``'s head built from ``given`` (what the study provides left
    empty) and its ``check_params`` run; ParamError naming the option of the
    hyper-parameter it refuses."""
    from ..heads import HEADS
    cls = HEADS[method].cls
    empty = {n: None for n in HEADS[method].param_names() if n in PROVIDED and n not in cls.param_defaults()}
    try:
        cls(**empty, **given).check_params()
    except (ValueError, TypeError) as e:
        bad = [p for p in given if str(e).startswith(p + " ") or f" {p} " in f" {e} "]
        option = option_of.get((method, bad[0])) if bad else None
        where = option or ", ".join(option_of.get((method, p), p) for p in given)
        raise ParamError(f"{where}: {HEADS[method].label}: {e}") from None


def resolved(params: Dict[str, Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Every hyper-parameter each used method runs with, defaults filled in
    (for run.json; what the study provides left out)."""
    from ..heads import HEADS
    return {m: {k: v for k, v in dict(HEADS[m].defaults(), **params.get(m, {})).items() if k not in PROVIDED}
            for m in methods}
