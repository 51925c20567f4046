"""The pipeline's configuration: read in one place, validated before any work.

    cfg = load_config("my.json", ["lpp.epochs=100"])      # ConfigError on any problem
    cfg = load_or_exit(args.config, args.set)             # CLIs: one line on stderr, exit 2
    cfg.lpp.epochs, cfg.backbones["vit"].weights, cfg.cascade.inmap_mix["vit"]
    cfg.with_values({"lpp.epochs": 300, "inmap.tau_t": 0.02})   # a changed copy (the sweep)
    json.dumps(cfg.to_dict(), indent=1)                   # the file's JSON, key order kept

Every default lives in ``default.json`` next to this file (package data); the
dataclasses below only say what each key is (type, range, choices).  A
configuration file names every key except the optional ones (the ``sweep``
section and ``budget.limit_on``), which come from ``default.json``.

The whole file is checked on load, in a few milliseconds and without
importing Jittor or opening a weights file: unknown keys (with the closest
valid one), types, ranges, NaN, the mixing weights and the backbones they
name, the routing ids against the class list when that file exists.  Each
problem is one ``ConfigError`` line ``<file>: <key>: <what is wrong>``.

Values keep the type they were written with (``1`` stays an int where a
float is expected), so ``to_dict()`` gives back exactly the JSON that was
read (plus ``--set`` overrides): the manifest and ``tuned.json`` are written
from it byte for byte.
"""
import collections.abc
import copy
import dataclasses
import difflib
import json
import math
import numbers
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

__all__ = ["Config", "ConfigError", "DEFAULT_CONFIG", "load_config", "load_or_exit", "config_from_dict",
           "Backbone", "DataSection", "LPPSection", "InMaPSection", "DogHeadSection",
           "CascadeSection", "SweepSection", "BudgetSection", "FrozenDict", "parse_override"]

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.json")

# Names of jclip.heads.templates.TEMPLATE_SETS (kept here so that checking a
# configuration does not import the heads; tests/test_config.py keeps them equal).
TEMPLATE_SETS = ("single", "imagenet7", "imagenet80")
DEVICES = ("cpu", "cuda")
DOG_HEAD_MODES = ("fast", "full")
LIMIT_ON = ("loaded", "by-use", "by-calls", "both", "all")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line
    ``<file>: <key>: <what is wrong>``."""


class FrozenDict(dict):
    """A dict that cannot be changed (``json.dumps``, ``dict(x)`` and ``==`` work as for a dict)."""

    def _frozen(self, *args, **kwargs):
        raise TypeError("configuration values are read-only; use Config.with_values()")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _frozen
    __ior__ = _frozen

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo):
        return FrozenDict({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


def _meta(**kw) -> Dict[str, Any]:
    """Field metadata: min / gt (> bound) / max / choices / nonempty / optional / mix."""
    return field(metadata=kw)


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
    seed: int
    shots: int = _meta(min=1)
    val_per_class: int = _meta(min=0)

    def file(self, key: str) -> str:
        """``root/<key>``: ``cfg.data.file("classes")`` -> ``Dataset/classes.txt``."""
        return os.path.join(self.root, getattr(self, key))


@dataclass(frozen=True)
class Backbone:
    """A CLIP backbone: a model name (``ViT-B/32``) and its weights file."""
    model: str
    weights: str


@dataclass(frozen=True)
class LPPSection:
    """LP++ on each backbone of ``cascade.lpp_mix`` (train.sh); the epoch is chosen on
    ``val_per_class`` held-out images per class."""
    epochs: int = _meta(min=1)
    momentum: float = _meta(min=0)
    alpha_every: int = _meta(min=1)
    alpha_scale: float = _meta(gt=0)
    val_per_class: int = _meta(min=0)
    seed: int


@dataclass(frozen=True)
class InMaPSection:
    """InMaP over all test classes (test.sh), transductive on the test images."""
    lr: float = _meta(gt=0)
    iters: int = _meta(min=1)
    iters_sinkhorn: int = _meta(min=1)
    tau_t: float = _meta(gt=0)
    tau_i: float = _meta(gt=0)
    alpha: float = _meta(min=0, max=1)    # a pseudo-label with max probability over alpha becomes one-hot
    gamma: float = _meta(min=0)           # exponent of the class-mass estimate (0: uniform)


@dataclass(frozen=True)
class DogHeadSection:
    """The ConvNeXt-V2 dog head (``mode`` fast: features once; full: augmented crops)."""
    model: str
    weights: str
    mode: str = _meta(choices=DOG_HEAD_MODES)
    epochs: int = _meta(min=1)
    batch_size: int = _meta(min=1)
    lr: Optional[float] = _meta(gt=0)
    size: int = _meta(min=1)
    seed: int
    val_per_class: int = _meta(min=0)


@dataclass(frozen=True)
class CascadeSection:
    """Mixing weights per backbone and the routing ids (unseen from, dog range)."""
    inmap_mix: Mapping[str, float] = _meta(mix=True)
    lpp_mix: Mapping[str, float] = _meta(mix=True)
    unseen_from: int = _meta(min=0)
    dog_range: Tuple[int, int] = _meta(min=0)
    dog_domain: str
    topk: int = _meta(min=1)


@dataclass(frozen=True)
class SweepSection:
    """Candidates for ``val.sh sweep``; ``mix_weights`` are the first backbone's weight."""
    templates: Tuple[str, ...] = _meta(nonempty=True, optional=True, choices=TEMPLATE_SETS)
    lpp_epochs: Tuple[int, ...] = _meta(nonempty=True, optional=True, min=1)
    inmap_tau_t: Tuple[float, ...] = _meta(nonempty=True, optional=True, gt=0)
    inmap_tau_i: Tuple[float, ...] = _meta(nonempty=True, optional=True, gt=0)
    inmap_iters: Tuple[int, ...] = _meta(nonempty=True, optional=True, min=1)
    mix_weights: Tuple[float, ...] = _meta(nonempty=True, optional=True, min=0, max=1)


@dataclass(frozen=True)
class BudgetSection:
    """budget.py: the limit and which count it applies to."""
    limit: int = _meta(min=1)
    limit_on: str = _meta(choices=LIMIT_ON, optional=True)
    num_classes: int = _meta(min=1)


@dataclass(frozen=True)
class Config:
    """A validated configuration (see the module docstring); build it with load_config."""
    data: DataSection
    out_dir: str
    cache_dir: Optional[str]
    device: Optional[str] = _meta(choices=DEVICES)
    batch_size: int = _meta(min=1)
    workers: Optional[int] = _meta(min=0)
    templates: str = _meta(choices=TEMPLATE_SETS)
    domain_suffix: bool
    backbones: Mapping[str, Backbone] = _meta(nonempty=True)
    lpp: LPPSection = _meta()
    inmap: InMaPSection = _meta()
    dog_head: DogHeadSection = _meta()
    cascade: CascadeSection = _meta()
    sweep: SweepSection = _meta(optional=True)
    budget: BudgetSection = _meta()
    # not settings: where it came from, and the JSON as read (for to_dict)
    path: str = field(default="", compare=False)
    _raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
            _set(raw, key, _to_json(value), self.path, "")
        return _build(raw, self.path)

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with top-level fields replaced: whole sections
        (``cfg.replace(lpp=dataclasses.replace(cfg.lpp, epochs=100))``) or values
        (``templates="single"``).  Only what differs is written, so key order,
        comments and omitted optional keys stay as they were."""
        values = {}
        for name, new in changes.items():
            if name not in _field_types(Config) or name in ("path", "_raw"):
                raise ConfigError(f"{self.path}: {name}: {_unknown(name, _settings(Config))}")
            old = getattr(self, name)
            if dataclasses.is_dataclass(new) and dataclasses.is_dataclass(old):
                for f in dataclasses.fields(new):
                    a, b = getattr(new, f.name), getattr(old, f.name)
                    if _dumps(a) != _dumps(b):
                        values[f"{name}.{f.name}"] = a
            elif _dumps(new) != _dumps(old):
                values[name] = new
        return self.with_values(values)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate a configuration file.

    Parameters:
        path: the JSON file; None = the packaged default.json.
        overrides: ``key.sub=value`` strings (``--set``); the value is parsed
            as JSON when it parses (``100``, ``[1, 2]``, ``null``), else kept as
            a string (``device=cpu``).
    Returns: the validated Config.
    Raises: ConfigError (one line: file, key, what is wrong).
    """
    path = os.path.abspath(os.fspath(path or DEFAULT_CONFIG))
    raw = _read_json(path)
    given = set()
    for item in overrides:
        key, value = parse_override(item, path)
        _set(raw, key, value, path, " (--set)")
        given.add(key)
    try:
        return _build(raw, path)
    except ConfigError as e:
        # a bad value that came from --set is not in the file: say where it came from
        head, _, rest = str(e).partition(": ")
        key, sep, what = rest.partition(": ")
        if head == path and sep and key in given:
            raise ConfigError(f"{path}: {key} (--set): {what}") from None
        raise


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


def parse_override(item: str, path: str = "--set") -> Tuple[str, Any]:
    """``"lpp.epochs=100"`` -> ``("lpp.epochs", 100)``; a value that is not JSON stays a string."""
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"{path}: --set {item!r}: expected key=value (e.g. lpp.epochs=100)")
    try:
        value = json.loads(value, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError:
        pass
    return key.strip(), value


def _no_duplicates(path):
    def hook(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ConfigError(f"{path}: {k}: given twice in one object")
            seen[k] = v
        return seen
    return hook


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{...}}, got {_json_type(raw)}")
    return raw


_DEFAULTS: Dict[str, Any] = {}


def _defaults() -> Dict[str, Any]:
    """default.json, read once (the source of values for omitted optional keys)."""
    if not _DEFAULTS:
        _DEFAULTS.update(_read_json(DEFAULT_CONFIG))
    return _DEFAULTS


# --------------------------------------------------------------------------
# Schema walking
# --------------------------------------------------------------------------

_HINTS: Dict[type, Dict[str, Any]] = {}


def _field_types(cls) -> Dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _settings(cls) -> Tuple[str, ...]:
    """The JSON keys of a section (Config's bookkeeping fields excluded)."""
    return tuple(k for k in _field_types(cls) if k not in ("path", "_raw"))


def _unknown(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    folded = {v.lower(): v for v in valid}
    close = [folded[key.lower()]] if key.lower() in folded else \
        difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    return f"unknown key (valid keys: {', '.join(valid)})"


def _section_type(tp) -> Optional[type]:
    """The dataclass a type hint stands for, or None."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _set(raw: Dict[str, Any], key: str, value: Any, path: str, how: str) -> None:
    """raw[key] = value for a dotted key, checked against the schema first."""
    parts = key.split(".")
    node, cls, elem = raw, Config, None   # cls: node's section; elem: value type of a mapping node
    for i, part in enumerate(parts):
        here = ".".join(parts[:i + 1])
        if cls is not None:
            if part == "_doc" or (part == "_tuned" and cls is Config):
                tp = None
            elif part not in _settings(cls):
                raise ConfigError(f"{path}: {here}{how}: no such setting"
                                  + _unknown(part, _settings(cls))[len("unknown key"):])
            else:
                tp = _field_types(cls)[part]
        else:
            tp = elem                     # any key of a mapping (a backbone, a mixing weight)
        if i == len(parts) - 1:
            node[part] = value
            return
        if part not in node and _section_type(tp) is not None:
            node[part] = {}               # an optional section the file leaves out, a new backbone
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{path}: {key}{how}: {here} is not a section "
                              f"(it holds {_json_type(node.get(part))})")
        node = node[part]
        if _section_type(tp) is not None:
            cls, elem = tp, None
        elif typing.get_origin(tp) is collections.abc.Mapping:
            cls, elem = None, typing.get_args(tp)[1]
        else:
            cls, elem = None, None        # free-form (inside _tuned)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, str):
        return f"the string {json.dumps(v)}"
    return json.dumps(v) if isinstance(v, (int, float)) else type(v).__name__


def _to_json(v: Any) -> Any:
    """A value as it goes into the JSON tree (sections, tuples, numpy numbers)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: _to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


def _dumps(v: Any) -> str:
    return json.dumps(_to_json(v), sort_keys=False)


class _Checker:
    """Converts one JSON tree to typed sections, raising on the first problem."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, what: str):
        raise ConfigError(f"{self.path}: {key}: {what}" if key else f"{self.path}: {what}")

    def section(self, cls, node: Any, where: str, default: Any) -> Any:
        if not isinstance(node, dict):
            self.fail(where, f"expected an object {{...}}, got {_json_type(node)}")
        fields = _field_types(cls)
        valid = _settings(cls)
        for key in node:
            if key == "_doc" or (key == "_tuned" and cls is Config):
                expect = str if key == "_doc" else dict
                if not isinstance(node[key], expect):
                    self.fail(_join(where, key), f"expected {'a string' if expect is str else 'an object'}, "
                                                 f"got {_json_type(node[key])}")
            elif key not in valid:
                self.fail(_join(where, key), _unknown(key, valid))
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
        values = {}
        for name in valid:
            key = _join(where, name)
            if name in node:
                value, dflt = node[name], (default or {}).get(name)
            elif meta[name].get("optional") and isinstance(default, dict) and name in default:
                value, dflt = default[name], default[name]
            else:
                hint = f" (default.json has {json.dumps(default[name])})" \
                    if isinstance(default, dict) and name in default and not isinstance(default[name], dict) else ""
                self.fail(key, f"missing (a required setting){hint}")
            values[name] = self.value(fields[name], value, key, meta[name], dflt)
        return cls(**values)

    def value(self, tp, v: Any, key: str, meta: Mapping[str, Any], default: Any = None) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Union:                        # Optional[X]
            if v is None:
                return None
            return self.value(args[0], v, key, meta, default)
        sub = _section_type(tp)
        if sub is not None:
            return self.section(sub, v, key, default)
        if origin is collections.abc.Mapping:
            return self.mapping(args[1], v, key, meta, default)
        if origin is tuple:
            return self.sequence(args, v, key, meta)
        return self.scalar(tp, v, key, meta)

    def scalar(self, tp, v: Any, key: str, meta: Mapping[str, Any]) -> Any:
        if tp is bool:
            if not isinstance(v, bool):
                self.fail(key, f"expected true or false, got {_json_type(v)}")
        elif tp is int:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(key, f"expected a whole number, got {_json_type(v)}")
        elif tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(key, f"expected a number, got {_json_type(v)}")
            if not math.isfinite(v):
                self.fail(key, f"expected a finite number, got {json.dumps(v)}")
        elif tp is str:
            if not isinstance(v, str):
                self.fail(key, f"expected a string, got {_json_type(v)}")
        if "choices" in meta and v not in meta["choices"]:
            self.fail(key, f"{json.dumps(v)} is not one of: {', '.join(map(json.dumps, meta['choices']))}")
        if "min" in meta and v < meta["min"]:
            self.fail(key, f"{v} is below the minimum {meta['min']}")
        if "gt" in meta and not v > meta["gt"]:
            self.fail(key, f"{v} must be greater than {meta['gt']}")
        if "max" in meta and v > meta["max"]:
            self.fail(key, f"{v} is above the maximum {meta['max']}")
        return v

    def sequence(self, args, v: Any, key: str, meta: Mapping[str, Any]) -> tuple:
        if not isinstance(v, list):
            self.fail(key, f"expected a list, got {_json_type(v)}")
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(v) != len(args):
            self.fail(key, f"expected a list of {len(args)} items, got {len(v)}")
        if meta.get("nonempty") and not v:
            self.fail(key, "the list is empty")
        types = [args[0]] * len(v) if variadic else list(args)
        return tuple(self.value(t, x, f"{key}[{i}]", meta) for i, (t, x) in enumerate(zip(types, v)))

    def mapping(self, tp, v: Any, key: str, meta: Mapping[str, Any], default: Any) -> FrozenDict:
        if not isinstance(v, dict):
            self.fail(key, f"expected an object {{...}}, got {_json_type(v)}")
        if (meta.get("nonempty") or meta.get("mix")) and not v:
            self.fail(key, "is empty")
        out = FrozenDict({k: self.value(tp, x, f"{key}.{k}", {}) for k, x in v.items()})
        if meta.get("mix"):
            negative = [k for k, x in out.items() if x < 0]
            if negative:
                self.fail(f"{key}.{negative[0]}", f"mixing weight {out[negative[0]]} is negative")
            if not any(out.values()):
                self.fail(key, "all mixing weights are zero (nothing would be mixed)")
        return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _build(raw: Dict[str, Any], path: str) -> Config:
    """Validate a JSON tree and return the Config."""
    checker = _Checker(path)
    cfg = checker.section(Config, raw, "", _defaults())
    cfg = dataclasses.replace(cfg, path=path, _raw=raw)
    _cross_checks(cfg, checker)
    return cfg


def _cross_checks(cfg: Config, c: _Checker) -> None:
    """Checks that involve more than one key (and the class lists, when present)."""
    casc = cfg.cascade
    for mix in ("inmap_mix", "lpp_mix"):
        unknown = [k for k in getattr(casc, mix) if k not in cfg.backbones]
        if unknown:
            c.fail(f"cascade.{mix}", f"unknown backbones {unknown}; `backbones` has "
                                     f"{', '.join(cfg.backbones)}")
    lo, hi = casc.dog_range
    if lo > hi:
        c.fail("cascade.dog_range", f"[{lo}, {hi}] is reversed (first id > last id)")
    if hi >= casc.unseen_from:
        c.fail("cascade.dog_range", f"[{lo}, {hi}] reaches the unseen classes "
                                    f"(cascade.unseen_from is {casc.unseen_from})")
    if hi - lo + 1 < casc.topk:
        c.fail("cascade.dog_range", f"[{lo}, {hi}] holds {hi - lo + 1} classes, fewer than "
                                    f"cascade.topk ({casc.topk}) that the dog head must answer")
    classes = cfg.data.file("classes")
    if os.path.isfile(classes):
        n = _count_classes(classes, "data.classes", c)
        if hi >= n:
            c.fail("cascade.dog_range", f"[{lo}, {hi}] is outside the {n} classes of {classes} "
                                        f"(ids 0-{n - 1})")
        if casc.unseen_from != n:
            c.fail("cascade.unseen_from", f"{casc.unseen_from}, but {classes} has {n} classes "
                                          f"(the unseen ids start right after the seen ones: {n})")
    test_classes = cfg.data.file("test_classes")
    if os.path.isfile(test_classes):
        n = _count_classes(test_classes, "data.test_classes", c)
        if casc.unseen_from > n:
            c.fail("cascade.unseen_from", f"{casc.unseen_from} is beyond the {n} classes of {test_classes}")


def _count_classes(path: str, key: str, c: _Checker) -> int:
    from ..data.lists import ListFormatError, read_classes
    try:
        return len(read_classes(path))
    except ListFormatError as e:
        c.fail(key, str(e))
