"""Typed, frozen settings read from JSON: a small generic schema engine.

    @dataclass(frozen=True)
    class Train:
        epochs: int = setting(min=1)
        lr: float = setting(gt=0)

    @dataclass(frozen=True)
    class Root:
        train: Train = setting()

    schema = Schema(Root, defaults=lambda: {...})
    raw = read_json(path)                          # the JSON object, duplicate keys refused
    given = schema.apply_overrides(raw, ["train.epochs=5"], path)
    root = schema.build(raw, path)                 # ConfigError "<file>: <key>: <what is wrong>"

It knows nothing of what the settings mean.  Types: bool, int, float, str,
``Optional[X]``, ``Tuple[X, ...]``, ``Tuple[X, Y]``, ``Mapping[str, X]`` and
nested frozen dataclasses (sections).  ``setting(...)`` metadata: ``min``,
``gt`` (strictly above), ``max``, ``choices``, ``nonempty``, ``optional``
(the value comes from the defaults when the file leaves the key out), ``mix``
(a mapping of weights, none negative, not all zero); ``internal()`` marks
bookkeeping fields that are not JSON keys.  Every section may carry a
``_doc`` string; the root may carry the free-form objects ``Schema(extras=)``
names.  Unknown keys are refused with the closest valid one; values keep the
type they were written with (``1`` stays an int where a float is allowed).
"""
import collections.abc
import copy
import dataclasses
import difflib
import json
import math
import numbers
import typing
from dataclasses import field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

from .json_depth import json_depth

__all__ = ["ConfigError", "FrozenDict", "Schema", "setting", "internal", "read_json", "parse_override",
           "blame_override", "json_type", "to_json"]


class ConfigError(ValueError):
    """Settings that cannot be used; the message is one line
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


def setting(**meta) -> Any:
    """A field's checks: min / gt (> bound) / max / choices / nonempty / optional / mix."""
    return field(metadata=meta)


def internal(**kw) -> Any:
    """A bookkeeping field (where the settings came from, ...): not a JSON key."""
    return field(compare=False, metadata={"internal": True}, **kw)


# --------------------------------------------------------------------------
# Reading JSON and overrides
# --------------------------------------------------------------------------

def _no_duplicates(path):
    def hook(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ConfigError(f"{path}: {k}: given twice in one object")
            seen[k] = v
        return seen
    return hook


MAX_CONFIG_CHARS, MAX_CONFIG_DEPTH = 16 << 20, 64


def read_json(path: str) -> Dict[str, Any]:
    """The JSON object in ``path`` (UTF-8, BOM allowed); ConfigError when it
    cannot be read, is not JSON, repeats a key or is not an object."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(MAX_CONFIG_CHARS + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: over {MAX_CONFIG_CHARS} characters; not a configuration")
    depth = json_depth(text)
    if depth > MAX_CONFIG_DEPTH:   # checked before the parser recurses
        raise ConfigError(f"{path}: JSON nested {depth} deep (at most {MAX_CONFIG_DEPTH})")
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{...}}, got {json_type(raw)}")
    return raw


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


def blame_override(error: ConfigError, path: str, given: Iterable[str]) -> ConfigError:
    """``error`` saying ``<key> (--set)`` when its key came from an override
    (the bad value is then not in the file); else ``error`` itself."""
    head, _, rest = str(error).partition(": ")
    key, sep, what = rest.partition(": ")
    if head == path and sep and key in set(given):
        return ConfigError(f"{path}: {key} (--set): {what}")
    return error


# --------------------------------------------------------------------------
# JSON values
# --------------------------------------------------------------------------

def json_type(v: Any) -> str:
    """How a JSON value reads in an error (``the string "300"``, ``a list``, ``true``)."""
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


def to_json(v: Any) -> Any:
    """A value as it goes into the JSON tree (sections, tuples, numpy numbers)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return v


def _dumps(v: Any) -> str:
    return json.dumps(to_json(v), sort_keys=False)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _section_type(tp) -> Optional[type]:
    """The dataclass a type hint stands for, or None."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _unknown(key: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    folded = {v.lower(): v for v in valid}
    close = [folded[key.lower()]] if key.lower() in folded else \
        difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    return f"unknown key (valid keys: {', '.join(valid)})"


# --------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------

class Schema:
    """The JSON form of a tree of frozen dataclasses rooted at ``root``.

    Parameters: root: the top section's dataclass; defaults: returns the
    JSON tree that optional keys the file leaves out are taken from (and
    that ``missing`` errors quote, naming it ``defaults_name``); extras:
    free-form objects the root may hold besides its settings (e.g. provenance).
    """

    def __init__(self, root: type, defaults: Callable[[], Mapping[str, Any]] = dict,
                 extras: Iterable[str] = (), defaults_name: str = "the defaults"):
        self.root, self.defaults, self.extras = root, defaults, tuple(extras)
        self.defaults_name = defaults_name
        self._hints: Dict[type, Dict[str, Any]] = {}

    def field_types(self, cls) -> Dict[str, Any]:
        """{setting: type hint} of a section (internal fields excluded)."""
        if cls not in self._hints:
            hints = typing.get_type_hints(cls)
            self._hints[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)
                                if not f.metadata.get("internal")}
        return self._hints[cls]

    def settings(self, cls) -> Tuple[str, ...]:
        """The JSON keys of a section."""
        return tuple(self.field_types(cls))

    def _free(self, cls, key: str) -> bool:
        """Keys that are not settings: ``_doc`` anywhere, the extras on the root."""
        return key == "_doc" or (cls is self.root and key in self.extras)

    def set(self, raw: Dict[str, Any], key: str, value: Any, path: str, how: str = "") -> None:
        """raw[key] = value for a dotted key, checked against the schema first
        (``how`` is added to the key in errors, e.g. `` (--set)``)."""
        parts = key.split(".")
        node, cls, elem = raw, self.root, None   # cls: node's section; elem: value type of a mapping node
        for i, part in enumerate(parts):
            here = ".".join(parts[:i + 1])
            if cls is not None:
                if self._free(cls, part):
                    tp = None
                elif part not in self.settings(cls):
                    raise ConfigError(f"{path}: {here}{how}: no such setting"
                                      + _unknown(part, self.settings(cls))[len("unknown key"):])
                else:
                    tp = self.field_types(cls)[part]
            else:
                tp = elem                     # any key of a mapping
            if i == len(parts) - 1:
                node[part] = value
                return
            if part not in node and _section_type(tp) is not None:
                node[part] = {}               # an optional section the file leaves out, a new mapping entry
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{path}: {key}{how}: {here} is not a section "
                                  f"(it holds {json_type(node.get(part))})")
            node = node[part]
            if _section_type(tp) is not None:
                cls, elem = tp, None
            elif typing.get_origin(tp) is collections.abc.Mapping:
                cls, elem = None, typing.get_args(tp)[1]
            else:
                cls, elem = None, None        # free-form (inside an extra)

    def apply_overrides(self, raw: Dict[str, Any], overrides: Iterable[str], path: str) -> Set[str]:
        """Apply ``key=value`` strings to ``raw``; returns the keys set."""
        given = set()
        for item in overrides:
            key, value = parse_override(item, path)
            self.set(raw, key, value, path, " (--set)")
            given.add(key)
        return given

    def changed_values(self, obj: Any, changes: Mapping[str, Any], path: str) -> Dict[str, Any]:
        """{dotted key: value} of what ``changes`` (top-level fields: whole
        sections or values) alter in ``obj``; only what differs is listed."""
        values = {}
        for name, new in changes.items():
            if name not in self.settings(type(obj)):
                raise ConfigError(f"{path}: {name}: {_unknown(name, self.settings(type(obj)))}")
            old = getattr(obj, name)
            if dataclasses.is_dataclass(new) and dataclasses.is_dataclass(old):
                for f in dataclasses.fields(new):
                    a, b = getattr(new, f.name), getattr(old, f.name)
                    if _dumps(a) != _dumps(b):
                        values[f"{name}.{f.name}"] = a
            elif _dumps(new) != _dumps(old):
                values[name] = new
        return values

    def build(self, raw: Mapping[str, Any], path: str) -> Any:
        """The root dataclass of a JSON tree; ConfigError on the first problem."""
        return _Checker(self, path).section(self.root, raw, "", self.defaults())


class _Checker:
    """Converts one JSON tree to typed sections, raising on the first problem."""

    def __init__(self, schema: Schema, path: str):
        self.schema, self.path = schema, path

    def fail(self, key: str, what: str):
        raise ConfigError(f"{self.path}: {key}: {what}" if key else f"{self.path}: {what}")

    def section(self, cls, node: Any, where: str, default: Any) -> Any:
        if not isinstance(node, dict):
            self.fail(where, f"expected an object {{...}}, got {json_type(node)}")
        fields = self.schema.field_types(cls)
        for key in node:
            if self.schema._free(cls, key):
                expect = str if key == "_doc" else dict
                if not isinstance(node[key], expect):
                    self.fail(_join(where, key), f"expected {'a string' if expect is str else 'an object'}, "
                                                 f"got {json_type(node[key])}")
            elif key not in fields:
                self.fail(_join(where, key), _unknown(key, fields))
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
        values = {}
        for name in fields:
            key = _join(where, name)
            if name in node:
                value, dflt = node[name], (default or {}).get(name)
            elif meta[name].get("optional") and isinstance(default, dict) and name in default:
                value, dflt = default[name], default[name]
            else:
                hint = f" ({self.schema.defaults_name} has {json.dumps(default[name])})" \
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
            return self.mapping(args[1], v, key, meta)
        if origin is tuple:
            return self.sequence(args, v, key, meta)
        return self.scalar(tp, v, key, meta)

    def scalar(self, tp, v: Any, key: str, meta: Mapping[str, Any]) -> Any:
        if tp is bool:
            if not isinstance(v, bool):
                self.fail(key, f"expected true or false, got {json_type(v)}")
        elif tp is int:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(key, f"expected a whole number, got {json_type(v)}")
            if not -(1 << 63) <= v < (1 << 63):     # every count, size and seed fits numpy's int64
                self.fail(key, f"{v} is outside the 64-bit integer range")
        elif tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(key, f"expected a number, got {json_type(v)}")
            if not math.isfinite(v):
                self.fail(key, f"expected a finite number, got {json.dumps(v)}")
        elif tp is str:
            if not isinstance(v, str):
                self.fail(key, f"expected a string, got {json_type(v)}")
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
            self.fail(key, f"expected a list, got {json_type(v)}")
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(v) != len(args):
            self.fail(key, f"expected a list of {len(args)} items, got {len(v)}")
        if meta.get("nonempty") and not v:
            self.fail(key, "the list is empty")
        types = [args[0]] * len(v) if variadic else list(args)
        return tuple(self.value(t, x, f"{key}[{i}]", meta) for i, (t, x) in enumerate(zip(types, v)))

    def mapping(self, tp, v: Any, key: str, meta: Mapping[str, Any]) -> FrozenDict:
        if not isinstance(v, dict):
            self.fail(key, f"expected an object {{...}}, got {json_type(v)}")
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
