"""Head files: one serializer, driven by what each head class declares.

A head class declares
- its hyper-parameters: the constructor's signature (the kind of each
  default gives its type; ``param_spec`` tightens one, ``param_array_spec``
  gives the arrays a hyper-parameter may hold, e.g. text_weights (C, D));
- its fitted attributes: ``fitted_spec`` {name: spec}, where a spec is a
  JSON spec of :mod:`jclip.file_schema` (Float(), Maybe(Int(0)), ...), an
  ``Array`` (shape symbols shared by every array of the file), ``MaybeArray``,
  ``ArrayDict`` ({key: array}) or ``Pairs`` ({key: value} of JSON scalars);
- ``_unsaved_params`` (a model: passed to the constructor again) and
  ``_head_params`` (a fitted start head carried inside the file);
- ``identity_spec`` and ``_file_identity()`` for what the file was learned on.

The file is one npz: ``__meta__`` (JSON header: format, version, head class,
params, param_arrays, params_from_fitted, fitted, fitted_arrays,
fitted_dicts, identity keys, start_head) and the arrays ``param/<name>``,
``fitted/<name>``, ``fitted/<name>/<i>``, ``start/...``.  ``read`` checks
the whole file against the schema derived from the class (and the start
head's against its own) before anything is set; a fault is one
FileFormatError naming the file and the key.  Version 2 is the layout
written since the estimator API; files saved then load unchanged.
"""
import collections.abc
import copy
import inspect
import json
import os
import typing
from collections import OrderedDict
from typing import Any, Callable, Dict, Mapping, Tuple

import numpy as np

from ..file_schema import (Any_, Array, Bool, DictOf, FileFormatError, FiniteJson, Float, Int, ListOf,
                           Maybe, Null, OneOf, Record, Spec, Str, check_arrays, check_value,
                           loads_bounded, read_npz)
from ..io import atomic_save_npz

FILE_FORMAT = "jclip-head"
FILE_VERSION = 2
META_KEY = "__meta__"
START_KEY, START_PREFIX = "start_head", "start/"
INT64 = (-(1 << 63), (1 << 63) - 1)


class MaybeArray:
    """A fitted array that may be None (stored as null in the header)."""

    def __init__(self, array: Array):
        self.array = array


class ArrayDict:
    """A fitted {key: array} (InMaP's snapshots, a prompt learner's parameters);
    every value checked against ``value``."""

    def __init__(self, value: Array, key: Spec = None):
        self.value, self.key = value, key or Str()


class Pairs(Spec):
    """A {key: value} of JSON scalars, stored as {"pairs": [[key, value], ...]}."""

    def __init__(self, key: Spec, value: Spec):
        self.key, self.value = key, value

    def check(self, value, where):
        rec = Record({"pairs": ListOf(ListOf(Any_(), 2, 2))}).check(value, where)
        return {self.key.check(k, f"{where}.pairs[{i}][0]"): self.value.check(v, f"{where}.pairs[{i}][1]")
                for i, (k, v) in enumerate(rec["pairs"])}

    @staticmethod
    def encode(value):
        return {"pairs": [[_plain(k), _plain(v)] for k, v in value.items()]}


class AsTuple(Spec):
    """``spec``'s value as a tuple (history rows are tuples in memory)."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def check(self, value, where):
        return tuple(self.spec.check(value, where))


def _plain(v):
    """numpy scalars -> Python ones, tuples -> lists: JSON."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(i) for i in v]
    if isinstance(v, dict):
        return {k: _plain(i) for k, i in v.items()}
    return v


def _tuples(v):
    """JSON lists back to tuples (sequence hyper-parameters are tuples)."""
    return tuple(_tuples(i) for i in v) if isinstance(v, list) else v


_SCALARS = {bool: Bool, int: lambda: Int(*INT64), float: Float, str: Str}


def _from_annotation(t):
    """The spec of a hyper-parameter's annotated type (Optional stripped;
    Sequence[X] / Tuple[X, ...] -> a list of X), or None when not plain JSON."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _from_annotation(inner[0]) if len(inner) == 1 else None
    if t in _SCALARS:
        return _SCALARS[t]()
    if origin in (list, tuple, collections.abc.Sequence) and args:
        item = _from_annotation(args[0])
        if item is not None and (origin is not tuple or len(args) == 1 or args[1] is Ellipsis
                                 or len(set(args)) == 1):
            return ListOf(item)
    return None


def _param_spec(cls, name: str, default) -> Spec:
    """A hyper-parameter's spec: declared (``param_spec``), else from its
    annotation, else from its default's kind; null only where the default is None."""
    if name in getattr(cls, "param_spec", {}):
        return cls.param_spec[name] if default is not None else Maybe(cls.param_spec[name])
    kind = _from_annotation(inspect.signature(cls.__init__).parameters[name].annotation)
    if kind is None and type(default) in _SCALARS:
        kind = _SCALARS[type(default)]()
    elif kind is None and isinstance(default, tuple) and default:
        kinds = {type(v) for v in default}
        kind = ListOf(Int(*INT64) if kinds == {int} else Float() if kinds <= {int, float} else
                      Str() if kinds == {str} else OneOf(Bool(), Float(), Str(), Null()))
    if kind is None:
        return FiniteJson()
    return Maybe(kind) if default is None else kind


def saved_params(cls):
    """The hyper-parameters a file holds (a model is passed again; a start head is embedded)."""
    skip = set(cls._unsaved_params) | set(cls._head_params)
    return [n for n in cls.param_names() if n not in skip]


def header_schema(cls) -> Record:
    """The header of a ``cls`` file, derived from its declarations."""
    defaults = cls.param_defaults()
    params = saved_params(cls)
    names = Str(choices=params)
    json_fitted, array_fitted, dict_fitted = {}, [], {}
    for k, spec in cls.fitted_spec.items():
        if isinstance(spec, Array):
            array_fitted.append(k)
        elif isinstance(spec, MaybeArray):
            array_fitted.append(k)
            json_fitted[k] = Null()
        elif isinstance(spec, ArrayDict):
            dict_fitted[k] = ListOf(spec.key)
        else:
            json_fitted[k] = spec
    fields = {
        "format": Str(choices=[FILE_FORMAT]), "version": Int(FILE_VERSION, FILE_VERSION),
        "head": Str(choices=[cls.__name__]),
        "params": Record({n: _param_spec(cls, n, defaults.get(n)) for n in params}, optional=params),
        "param_arrays": ListOf(names), "params_from_fitted": ListOf(names),
        "fitted": Record(json_fitted, optional=json_fitted),
        "fitted_arrays": ListOf(Str(choices=array_fitted)),
        "fitted_dicts": Record(dict_fitted, optional=dict_fitted),
        **cls.identity_spec,
    }
    if cls._head_params:
        fields[START_KEY] = Maybe(DictOf(Any_()))
    return Record(fields, optional=[START_KEY] if cls._head_params else ())


def _one_place(path, what: str, name: str, places: Mapping[str, Any], required: bool) -> str:
    """Which of ``places`` holds ``name`` (exactly one; none only when not ``required``)."""
    found = [p for p, held in places.items() if name in held]
    if len(found) > 1:
        raise FileFormatError(path, f"{what}.{name}", f"stored twice (in {' and '.join(found)})")
    if not found:
        if required:
            raise FileFormatError(path, f"{what}.{name}", "missing")
        return ""
    return found[0]


Resolve = Callable[[str], type]      # a head class by name (the registry's head_class)


def check(cls, header, arrays: Dict[str, np.ndarray], path: str, resolve: Resolve,
          prefix: str = "") -> Dict[str, Any]:
    """Check a ``cls`` file's header and arrays (``resolve``: a start head's
    class by name; ``prefix``: where a start head's arrays sit); returns {"params": {...}, "fitted": {...},
    "from_fitted": [...], "start": (class, checked) or None}; nothing is set."""
    where = prefix.rstrip("/").replace("/", ".") if prefix else ""
    h = check_value(path, header, header_schema(cls), where)
    key = (lambda k: f"{where}.{k}" if where else k)
    specs, params, fitted = {}, {}, {}
    for n in saved_params(cls):
        place = _one_place(path, key("params"), n, {"params": h["params"], "param_arrays": h["param_arrays"],
                                                    "params_from_fitted": h["params_from_fitted"]}, True)
        if place == "params":
            params[n] = _tuples(h["params"][n])
        elif place == "param_arrays":
            specs[f"{prefix}param/{n}"] = getattr(cls, "param_array_spec", {}).get(
                n, Array(("float16", "float32", "float64", "int32", "int64", "bool"), None))
    dicts = {}
    for k, spec in cls.fitted_spec.items():
        optional = isinstance(spec, MaybeArray) or (isinstance(spec, OneOf) and any(
            isinstance(s, Null) for s in spec.specs))
        place = _one_place(path, key("fitted"), k, {"fitted": h["fitted"], "fitted_arrays": h["fitted_arrays"],
                                                    "fitted_dicts": h["fitted_dicts"]}, not optional)
        if isinstance(spec, (Array, MaybeArray)) and place == "fitted_arrays":
            specs[f"{prefix}fitted/{k}"] = spec if isinstance(spec, Array) else spec.array
        elif isinstance(spec, ArrayDict) and place == "fitted_dicts":
            keys = h["fitted_dicts"][k]
            if len(set(map(json.dumps, keys))) != len(keys):
                raise FileFormatError(path, f"{key('fitted_dicts')}.{k}", "a key is repeated")
            dicts[k] = keys
            for i in range(len(keys)):
                specs[f"{prefix}fitted/{k}/{i}"] = spec.value
        elif place == "fitted" and not isinstance(spec, (Array, ArrayDict)):
            fitted[k] = h["fitted"][k]
        elif place:
            raise FileFormatError(path, f"{key(place)}.{k}", "stored as the wrong kind of value")
        else:
            fitted[k] = None
    for n in h["params_from_fitted"]:
        if not isinstance(cls.fitted_spec.get(n + "_"), (Array, MaybeArray)) or \
                f"{prefix}fitted/{n}_" not in specs:
            raise FileFormatError(path, f"{key('params_from_fitted')}", f"{n}: no fitted array {n}_ to take it from")
    own = {k: v for k, v in arrays.items() if k.startswith(prefix) and not k.startswith(prefix + START_PREFIX)}
    check_arrays(path, own, specs)
    for k, keys in dicts.items():
        fitted[k] = OrderedDict((kk, arrays[f"{prefix}fitted/{k}/{i}"]) for i, kk in enumerate(keys))
    for k in cls.fitted_spec:
        if f"{prefix}fitted/{k}" in specs:
            fitted[k] = arrays[f"{prefix}fitted/{k}"]
    for n in saved_params(cls):
        if f"{prefix}param/{n}" in specs:
            params[n] = arrays[f"{prefix}param/{n}"]
    start = None
    sub = prefix + START_PREFIX
    if h.get(START_KEY) is not None:
        name = h[START_KEY].get("head")
        try:
            start_cls = resolve(name)
        except (KeyError, TypeError):
            raise FileFormatError(path, key(f"{START_KEY}.head"), f"unknown start head class {name!r}") from None
        if start_cls._unsaved_params:
            raise FileFormatError(path, key(START_KEY), f"a {name} start head cannot be carried in a file")
        start = (start_cls, check(start_cls, h[START_KEY], arrays, path, resolve, sub))
    elif any(k.startswith(sub) for k in arrays):
        raise FileFormatError(path, key(START_KEY), f"missing, yet the file holds start head arrays "
                                                    f"({next(k for k in arrays if k.startswith(sub))})")
    return {"params": params, "fitted": fitted, "from_fitted": h["params_from_fitted"], "start": start,
            "identity": {k: h[k] for k in cls.identity_spec}}


def to_file(head) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of a fitted head, as its class declares them."""
    cls = type(head)
    meta = {"format": FILE_FORMAT, "version": FILE_VERSION, "head": cls.__name__, "params": {},
            "param_arrays": [], "params_from_fitted": [], "fitted": {}, "fitted_arrays": [], "fitted_dicts": {}}
    arrays: Dict[str, np.ndarray] = {}
    for k, spec in cls.fitted_spec.items():
        v = getattr(head, k, None)
        if isinstance(spec, (Array, MaybeArray)) and v is not None:
            meta["fitted_arrays"].append(k)
            arrays[f"fitted/{k}"] = np.asarray(v)
        elif isinstance(spec, ArrayDict):
            meta["fitted_dicts"][k] = [_plain(kk) for kk in v]
            for i, a in enumerate(v.values()):
                arrays[f"fitted/{k}/{i}"] = np.asarray(a)
        else:
            meta["fitted"][k] = Pairs.encode(v) if isinstance(spec, Pairs) and v is not None else _plain(v)
    for n in saved_params(cls):
        v = getattr(head, n)
        if v is not None and isinstance(getattr(head, n + "_", None), np.ndarray) and \
                isinstance(cls.fitted_spec.get(n + "_"), (Array, MaybeArray)):
            meta["params_from_fitted"].append(n)            # e.g. text_weights: stored once
        elif isinstance(v, np.ndarray):
            meta["param_arrays"].append(n)
            arrays[f"param/{n}"] = v
        else:
            meta["params"][n] = _plain(v)
    meta.update(head._file_identity())
    for n in cls._head_params:
        start = getattr(head, n)
        if start is not None:
            start_meta, start_arrays = to_file(start)
            meta[START_KEY] = start_meta
            arrays.update({START_PREFIX + k: v for k, v in start_arrays.items()})
    return meta, arrays


def read_raw(path) -> Tuple[Any, Dict[str, np.ndarray]]:
    """(header JSON, arrays) of a head file, bounded and unchecked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such head file")
    try:
        arrays = read_npz(path)
    except FileFormatError as e:
        if e.key:
            raise
        raise FileFormatError(path, "", f"not a jclip head file ({e.problem})") from None
    if META_KEY not in arrays:
        raise FileFormatError(path, "", f"not a jclip head file (no {META_KEY} header; heads saved before "
                                        f"head file format {FILE_VERSION} must be retrained)")
    meta = arrays.pop(META_KEY)
    if meta.dtype.kind != "U" or meta.ndim != 0:
        raise FileFormatError(path, META_KEY, "not a text header")
    header = loads_bounded(str(meta), path)
    check_value(path, header, Record({"format": Str(choices=[FILE_FORMAT]), "head": Str()}, extra=True))
    if header.get("version") != FILE_VERSION:
        raise FileFormatError(path, "", f"head file format version {header.get('version')!r}, this "
                                               f"jclip reads version {FILE_VERSION}; retrain the head")
    return header, arrays


def head_class_of(path) -> str:
    """The head class a file names (its header checked as far as that)."""
    return read_raw(path)[0]["head"]


def _restore(head, checked: Dict[str, Any], path: str):
    """A copy of ``head`` with the checked state set (``head`` itself untouched)."""
    new = copy.copy(head)
    for k, v in checked["params"].items():
        setattr(new, k, v)
    for k, v in checked["fitted"].items():
        setattr(new, k, v)
    for n in checked["from_fitted"]:
        setattr(new, n, getattr(new, n + "_"))
    if checked["start"] is not None:
        start_cls, sub = checked["start"]
        start = start_cls.__new__(start_cls)
        start.__dict__.update({n: None for n in start_cls._unsaved_params})
        setattr(new, type(head)._head_params[0], _restore(start, sub, path))
    elif type(head)._head_params:
        setattr(new, type(head)._head_params[0], None)
    try:
        new.check_params()
    except (ValueError, TypeError) as e:             # a head's own check meeting a value of another kind
        raise FileFormatError(path, "params", str(e)) from None
    return new


class NpzContainer:
    """The npz file every head but ClipFinetune is written to."""

    @staticmethod
    def write(head, path, meta, arrays):
        json.dumps(meta, allow_nan=False)                   # a non-finite value is a bug here, not in the file
        atomic_save_npz(path, dict(arrays, **{META_KEY: np.array(json.dumps(meta))}))

    @staticmethod
    def read(path):
        return read_raw(path)


def save(head, path) -> str:
    """Write a fitted head to ``path`` in its class's container; returns the path."""
    meta, arrays = to_file(head)
    type(head).file_container.write(head, os.fspath(path), meta, arrays)
    return os.fspath(path)


def load(head, path, resolve: Resolve, check_identity: bool = True):
    """Fill ``head`` from a file written by ``save`` of its class; returns it."""
    path = os.fspath(path)
    header, arrays = type(head).file_container.read(path)
    if header["head"] != type(head).__name__:
        raise FileFormatError(path, "", f"holds a {header['head']} head, not a {type(head).__name__}")
    checked = check(type(head), header, arrays, path, resolve)
    new = _restore(head, checked, path)
    if check_identity and type(head).identity_spec:
        new._check_identity(checked["identity"], path)
    new._after_load(path)
    head.__dict__.clear()
    head.__dict__.update(new.__dict__)
    return head


def check_file(cls, path, resolve: Resolve) -> Dict[str, Any]:
    """A ``cls`` file read through its container and checked, the
    hyper-parameters by the class's check_params too (nothing built, no model)."""
    header, arrays = cls.file_container.read(os.fspath(path))
    if header["head"] != cls.__name__:
        raise FileFormatError(path, "", f"holds a {header['head']} head, not a {cls.__name__}")
    checked = check(cls, header, arrays, os.fspath(path), resolve)
    bare = cls.__new__(cls)                          # the hyper-parameters' own checks, no model
    bare.__dict__.update({n: None for n in cls._unsaved_params})
    _restore(bare, checked, os.fspath(path))
    return checked
