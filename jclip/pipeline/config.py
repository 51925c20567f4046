"""The pipeline's configuration: read in one place, validated before any work.

    cfg = load_config("my.json", ["lpp.epochs=100"])      # ConfigError on any problem
    cfg = load_for_command(args.config, args.set)         # commands: + the class lists; exit 2
    cfg.lpp.epochs, cfg.backbones["vit"].weights, cfg.cascade.inmap_mix["vit"]
    cfg.with_values({"lpp.epochs": 300, "inmap.tau_t": 0.02})   # a changed copy (the sweep)
    json.dumps(cfg.to_dict(), indent=1)                   # the file's JSON, key order kept

Every default lives in ``default.json`` next to this file (package data); the
dataclasses below only say what each key is (type, range, choices), and the
generic engine (``jclip.config_schema``) reads, checks and overrides them.  A
configuration file names every key except the optional ones (the ``sweep``
section and ``budget.limit_on``), which come from ``default.json``.

The whole file is checked on load, in a few milliseconds and without
importing Jittor or opening any other file: unknown keys (with the closest
valid one), types, ranges, NaN, the mixing weights and the backbones they
name, the routing ids against each other.  The commands then check the
routing ids against the class lists (``check_class_lists``, when those files
exist), still before any model is loaded.  Each problem is one
``ConfigError`` line ``<file>: <key>: <what is wrong>``.

Values keep the type they were written with (``1`` stays an int where a
float is expected), so ``to_dict()`` gives back exactly the JSON that was
read (plus ``--set`` overrides): the manifest and ``tuned.json`` are written
from it byte for byte.
"""
import copy
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from ..catalog import template_set_names
from ..config_schema import (ConfigError, FrozenDict, Schema, blame_override, internal, parse_override,
                             read_json, setting, to_json)

__all__ = ["Config", "ConfigError", "DEFAULT_CONFIG", "load_config", "load_or_exit", "load_for_command",
           "check_class_lists", "config_from_dict", "BackboneSpec", "DataSection", "LPPSection",
           "InMaPSection", "DogHeadSection", "CascadeSection", "StageHeadSection", "StagesSection",
           "SweepSection", "BudgetSection",
           "FrozenDict", "parse_override"]

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.json")

# the prompt template sets by name, from the catalogue (no heads, no numpy imported)
TEMPLATE_SETS = template_set_names()
DEVICES = ("cpu", "cuda")
DOG_HEAD_MODES = ("fast", "full")
LIMIT_ON = ("loaded", "by-use", "by-calls", "both", "all")
SEED_MAX = 2 ** 32 - 1      # numpy's seeds: whole numbers in [0, 2**32 - 1]


# --------------------------------------------------------------------------
# The sections (what each key is; the values are in default.json)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSection:
    """Where the contest's files are; paths are relative to the working directory."""
    root: str
    classes: str
    test_classes: str
    lists: str
    test_images: str
    seed: int = setting(min=0, max=SEED_MAX)
    shots: int = setting(min=1)
    val_per_class: int = setting(min=0)

    def file(self, key: str) -> str:
        """``root/<key>``: ``cfg.data.file("classes")`` -> ``Dataset/classes.txt``."""
        return os.path.join(self.root, getattr(self, key))


@dataclass(frozen=True)
class BackboneSpec:
    """Which CLIP backbone to load: a model name (``ViT-B/32``) and its weights file."""
    model: str
    weights: str


@dataclass(frozen=True)
class LPPSection:
    """LP++ on each backbone of ``cascade.lpp_mix`` (train.sh); the epoch is chosen on
    ``val_per_class`` held-out images per class."""
    epochs: int = setting(min=1)
    momentum: float = setting(min=0)
    alpha_every: int = setting(min=1)
    alpha_scale: float = setting(gt=0)
    val_per_class: int = setting(min=0)
    seed: int = setting(min=0, max=SEED_MAX)


@dataclass(frozen=True)
class InMaPSection:
    """InMaP over all test classes (test.sh), transductive on the test images."""
    lr: float = setting(gt=0)
    iters: int = setting(min=1)
    iters_sinkhorn: int = setting(min=1)
    tau_t: float = setting(gt=0)
    tau_i: float = setting(gt=0)
    alpha: float = setting(min=0, max=1)    # a pseudo-label with max probability over alpha becomes one-hot
    gamma: float = setting(min=0)           # exponent of the class-mass estimate (0: uniform)


@dataclass(frozen=True)
class DogHeadSection:
    """The ConvNeXt-V2 dog head (``mode`` fast: features once; full: augmented crops)."""
    model: str
    weights: str
    mode: str = setting(choices=DOG_HEAD_MODES)
    epochs: int = setting(min=1)
    batch_size: int = setting(min=1)
    lr: Optional[float] = setting(gt=0)
    size: int = setting(min=1)
    seed: int = setting(min=0, max=SEED_MAX)
    val_per_class: int = setting(min=0)


@dataclass(frozen=True)
class CascadeSection:
    """Mixing weights per backbone and the routing ids (unseen from, dog range)."""
    inmap_mix: Mapping[str, float] = setting(mix=True)
    lpp_mix: Mapping[str, float] = setting(mix=True)
    unseen_from: int = setting(min=0)
    dog_range: Tuple[int, int] = setting(min=0)
    dog_domain: str
    topk: int = setting(min=1)


@dataclass(frozen=True)
class StageHeadSection:
    """The head of one cascade stage: a method name of ``jclip.heads.HEADS``, the
    head that starts it (``init``, a method name or null) and its hyper-parameters
    (``params``; InMaP's and LP++'s are the ``inmap`` and ``lpp`` sections).
    Which heads and starts can serve which stage: ``pipeline.heads.check_stages``."""
    head: str
    init: Optional[str] = setting(optional=True)
    params: Mapping[str, Any] = setting(optional=True)


@dataclass(frozen=True)
class StagesSection:
    """The unseen stage's head (over every test class, no shots: InMaP by default)
    and the seen stage's (fitted on the shots by train.sh: LP++ by default); a
    stage left out keeps default.json's."""
    unseen: StageHeadSection = setting(optional=True)
    seen: StageHeadSection = setting(optional=True)


@dataclass(frozen=True)
class SweepSection:
    """Candidates for ``val.sh sweep``; ``mix_weights`` are the first backbone's weight."""
    templates: Tuple[str, ...] = setting(nonempty=True, optional=True, choices=TEMPLATE_SETS)
    lpp_epochs: Tuple[int, ...] = setting(nonempty=True, optional=True, min=1)
    inmap_tau_t: Tuple[float, ...] = setting(nonempty=True, optional=True, gt=0)
    inmap_tau_i: Tuple[float, ...] = setting(nonempty=True, optional=True, gt=0)
    inmap_iters: Tuple[int, ...] = setting(nonempty=True, optional=True, min=1)
    mix_weights: Tuple[float, ...] = setting(nonempty=True, optional=True, min=0, max=1)
    unseen_heads: Tuple[str, ...] = setting(nonempty=True, optional=True)   # "transclip on inmap"
    seen_heads: Tuple[str, ...] = setting(nonempty=True, optional=True)


@dataclass(frozen=True)
class BudgetSection:
    """budget.py: the limit and which count it applies to."""
    limit: int = setting(min=1)
    limit_on: str = setting(choices=LIMIT_ON, optional=True)
    num_classes: int = setting(min=1)


@dataclass(frozen=True)
class Config:
    """A validated configuration (see the module docstring); build it with load_config."""
    data: DataSection
    out_dir: str
    cache_dir: Optional[str]
    device: Optional[str] = setting(choices=DEVICES)
    batch_size: int = setting(min=1)
    workers: Optional[int] = setting(min=0)
    templates: str = setting(choices=TEMPLATE_SETS)
    domain_suffix: bool
    backbones: Mapping[str, BackboneSpec] = setting(nonempty=True)
    lpp: LPPSection = setting()
    inmap: InMaPSection = setting()
    dog_head: DogHeadSection = setting()
    cascade: CascadeSection = setting()
    stages: StagesSection = setting(optional=True)
    sweep: SweepSection = setting(optional=True)
    budget: BudgetSection = setting()
    # not settings: where it came from, the JSON as read (for to_dict), the keys --set gave
    path: str = internal(default="")
    _raw: Mapping[str, Any] = internal(default_factory=dict, repr=False)
    _given: Tuple[str, ...] = internal(default=(), repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """The configuration's JSON form: the file's keys in the file's order,
        ``_doc`` comments and the ``_tuned`` block kept, overrides applied."""
        return copy.deepcopy(dict(self._raw))

    def with_values(self, values: Mapping[str, Any]) -> "Config":
        """A validated copy with ``{"section.key": value}`` changed.

        Parameters: values: dotted keys (``"lpp.epochs"``, ``"cascade.inmap_mix"``,
        ``"_tuned"``) to new values (JSON values, tuples, section objects).
        Returns: the new Config (same ``path``).  Raises ConfigError.
        """
        raw = copy.deepcopy(dict(self._raw))
        for key, value in values.items():
            SCHEMA.set(raw, key, to_json(value), self.path)
        return _build(raw, self.path, tuple(k for k in self._given if k not in values))

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with top-level fields replaced: whole sections
        (``cfg.replace(lpp=dataclasses.replace(cfg.lpp, epochs=100))``) or values
        (``templates="single"``).  Only what differs is written, so key order,
        comments and omitted optional keys stay as they were."""
        return self.with_values(SCHEMA.changed_values(self, changes, self.path))


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a configuration file (no other file is read:
    the checks against the class lists are ``check_class_lists``).

    Parameters:
        path: the JSON file; None = the packaged default.json.
        overrides: ``key.sub=value`` strings (``--set``); the value is parsed
            as JSON when it parses (``100``, ``[1, 2]``, ``null``), else kept as
            a string (``device=cpu``).
    Returns: the validated Config.
    Raises: ConfigError (one line: file, key, what is wrong).
    """
    path = os.path.abspath(os.fspath(path or DEFAULT_CONFIG))
    raw = read_json(path)
    check_tuned(raw, path)
    given = SCHEMA.apply_overrides(raw, overrides, path)
    try:
        return _build(raw, path, tuple(sorted(given)))
    except ConfigError as e:
        raise blame_override(e, path, given) from None


def check_tuned(raw: Mapping[str, Any], path: str) -> None:
    """The ``_tuned`` block the sweep writes (validate/sweep.py), checked against
    its schema (file_schema, imported only for such a file: a plain configuration
    loads without numpy); ConfigError naming the file and key."""
    if "_tuned" not in raw:
        return
    from ..file_schema import FileFormatError, Float, Int, ListOf, Record, Sha256, Str, check_value
    fields = {"by": Str(), "from": Str(), "val_list_sha256": Sha256(), "seed": Int(-(1 << 63), (1 << 63) - 1),
              "held_out_classes": ListOf(Str()), "images": Int(0, 1 << 62), "top1": Float(0, 1),
              "baseline_top1": Float(0, 1), "trials": Int(1, 1 << 62)}
    # provenance: what the sweep writes is typed; a hand-edited block may omit or add keys
    schema = Record(fields, optional=fields, extra=True)
    try:
        check_value(path, raw["_tuned"], schema, "_tuned")
    except FileFormatError as e:
        raise ConfigError(str(e)) from None


def config_from_dict(d: Mapping[str, Any], path: str = "<configuration>") -> Config:
    """Validate a configuration held in memory (a copy is kept).

    Parameters: d: the JSON form; path: names it in errors and becomes ``cfg.path``.
    Returns: the validated Config.  Raises: ConfigError.
    """
    return _build(json.loads(json.dumps(d)), path)


def load_or_exit(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """load_config for command lines: on a ConfigError print ``error: <message>``
    on stderr and exit with status 2 (as argparse does for bad arguments)."""
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def load_for_command(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """What train, test, val and budget run before any work: ``load_or_exit``,
    then ``check_class_lists``; either's problem is one line on stderr, exit 2."""
    cfg = load_or_exit(path, overrides)
    try:
        check_class_lists(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return cfg


_DEFAULTS: Dict[str, Any] = {}


def _defaults() -> Dict[str, Any]:
    """default.json, read once (the source of values for omitted optional keys)."""
    if not _DEFAULTS:
        _DEFAULTS.update(read_json(DEFAULT_CONFIG))
    return _DEFAULTS


SCHEMA = Schema(Config, _defaults, extras=("_tuned",), defaults_name="default.json")


def _fail(cfg: Config, key: str, what: str):
    raise ConfigError(f"{cfg.path}: {key}: {what}")


def _build(raw: Dict[str, Any], path: str, given: Tuple[str, ...] = ()) -> Config:
    """Validate a JSON tree and return the Config."""
    cfg = dataclasses.replace(SCHEMA.build(raw, path), path=path, _raw=raw, _given=given)
    _cross_checks(cfg)
    return cfg


def _cross_checks(cfg: Config) -> None:
    """Checks that involve more than one key (no file is read)."""
    casc = cfg.cascade
    for mix in ("inmap_mix", "lpp_mix"):
        unknown = [k for k in getattr(casc, mix) if k not in cfg.backbones]
        if unknown:
            _fail(cfg, f"cascade.{mix}", f"unknown backbones {unknown}; `backbones` has "
                                         f"{', '.join(cfg.backbones)}")
    lo, hi = casc.dog_range
    if lo > hi:
        _fail(cfg, "cascade.dog_range", f"[{lo}, {hi}] is reversed (first id > last id)")
    if hi >= casc.unseen_from:
        _fail(cfg, "cascade.dog_range", f"[{lo}, {hi}] reaches the unseen classes "
                                        f"(cascade.unseen_from is {casc.unseen_from})")
    if hi - lo + 1 < casc.topk:
        _fail(cfg, "cascade.dog_range", f"[{lo}, {hi}] holds {hi - lo + 1} classes, fewer than "
                                        f"cascade.topk ({casc.topk}) that the dog head must answer")
    from .stages import check_stages     # the stage heads (imports jclip.heads only when not the defaults)
    try:
        check_stages(cfg)
    except ValueError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None


def check_class_lists(cfg: Config) -> None:
    """The routing ids against the class lists, when those files exist (the
    commands run this before any work; ``load_config`` reads no data file).

    Raises: ConfigError ``<config file>: <key>[ (--set)]: <what is wrong>``.
    """
    try:
        _check_class_lists(cfg)
    except ConfigError as e:
        raise blame_override(e, cfg.path, cfg._given) from None


def _check_class_lists(cfg: Config) -> None:
    casc = cfg.cascade
    lo, hi = casc.dog_range
    classes = cfg.data.file("classes")
    if os.path.isfile(classes):
        n = _count_classes(cfg, classes, "data.classes")
        if hi >= n:
            _fail(cfg, "cascade.dog_range", f"[{lo}, {hi}] is outside the {n} classes of {classes} "
                                            f"(ids 0-{n - 1})")
        if casc.unseen_from != n:
            _fail(cfg, "cascade.unseen_from", f"{casc.unseen_from}, but {classes} has {n} classes "
                                              f"(the unseen ids start right after the seen ones: {n})")
    test_classes = cfg.data.file("test_classes")
    if os.path.isfile(test_classes):
        n = _count_classes(cfg, test_classes, "data.test_classes")
        if casc.unseen_from > n:
            _fail(cfg, "cascade.unseen_from", f"{casc.unseen_from} is beyond the {n} classes of {test_classes}")
        if os.path.isfile(classes):
            _check_unseen_are_new(cfg, classes, test_classes)


def _class_names(cfg: Config, path: str, key: str):
    from ..data.lists import ListFormatError, read_classes
    try:
        return read_classes(path)
    except ListFormatError as e:
        _fail(cfg, key, str(e))


def _count_classes(cfg: Config, path: str, key: str) -> int:
    return len(_class_names(cfg, path, key))


def _check_unseen_are_new(cfg: Config, classes: str, test_classes: str) -> None:
    """The unseen test classes (ids from cascade.unseen_from) are none of the
    training classes and none twice, compared as the text encoder sees the
    names (``heads.templates.class_key``: 'Golden_Retriever' is 'golden retriever')."""
    from ..heads.templates import class_key
    seen = {class_key(c): c for c in _class_names(cfg, classes, "data.classes")}
    unseen = _class_names(cfg, test_classes, "data.test_classes")[cfg.cascade.unseen_from:]
    first = {}
    for name in unseen:
        key = class_key(name)
        if key in seen:
            _fail(cfg, "data.test_classes", f"{test_classes}: unseen class {name!r} is the training class "
                                            f"{seen[key]!r} of {classes} (names compared as the prompts "
                                            "see them: case, '_', '-' and spaces ignored)")
        if key in first:
            _fail(cfg, "data.test_classes", f"{test_classes}: unseen classes {first[key]!r} and {name!r} "
                                            "are one class to the prompts (case, '_', '-' and spaces ignored)")
        first[key] = name
