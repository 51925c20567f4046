"""The estimator interface every few-shot head shares, and the input checks they use.

Heads follow scikit-learn's conventions:

- ``__init__`` stores its arguments unchanged (hyper-parameters and the inputs
  that define the classes, such as ``text_weights``); nothing is converted or
  checked there, so ``get_params()`` returns exactly what was given;
- ``fit(features, labels=None, val_features=None, val_labels=None) -> self``
  validates the hyper-parameters and the data, then learns;
- what ``fit`` learns lives in attributes whose names end in ``_``;
- ``logits(features) -> (N, C)``, ``predict``, ``predict_topk``, ``score``;
- ``save(path)`` / ``load(path)``: one npz file (written atomically) holding
  the hyper-parameters and the fitted state, with a header naming the head
  class and the format version; ``load`` refuses any other file.

Heads work on L2-normalised features held in numpy arrays.  They compute in
the dtype they are given (float32 stays float32 for speed, float64 stays
float64 for exact checks); any other dtype is converted to float32.
"""
import inspect
import json
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..io import atomic_save_npz
from ..metrics import topk_accuracy, topk_ids

# How far a row norm may stray from 1 before features count as not normalised
# (fp16 features that were normalised in fp16 land within ~1e-3).
NORM_TOLERANCE = 1e-2

# The header every saved head carries; files without it (or another version)
# are refused.  Version 2: the estimator API (params + fitted attributes).
FILE_FORMAT = "jclip-head"
FILE_VERSION = 2
META_KEY = "__meta__"


def as_features(x, name: str = "features", dim: Optional[int] = None, normalised: bool = True,
                dtype=None) -> np.ndarray:
    """Check a (N, D) feature array and return it as a float array.

    Parameters: x the array; name names it in errors; dim the expected width;
    normalised: rows must be unit length; dtype: the result's (default: x's
    when float32/float64, else float32).
    Returns: a C-contiguous float array.  Raises ValueError for the wrong rank
    or width, an empty array, non-finite values or rows that are not unit length.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {dim}")
    if dtype is None:
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
    x = np.ascontiguousarray(x, dtype=dtype)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} has NaN or infinite values in {bad} rows")
    if normalised:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
        worst = float(np.abs(norms - 1.0).max())
        if worst > NORM_TOLERANCE:
            raise ValueError(
                f"{name} must be L2-normalised rows (a row norm is off by "
                f"{worst:.3g}); use jclip.heads.l2_normalize first")
    return x


def as_labels(y, n: int, num_classes: int, name: str = "labels", every_class: bool = True) -> np.ndarray:
    """Check integer labels of length ``n`` in [0, num_classes).

    Parameters: every_class: every class must have at least one label.
    Returns: the labels as int64.  Raises ValueError naming what is wrong.
    """
    if y is None:
        raise ValueError(f"{name} are needed (a 1-D array of {n} class ids)")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{name} must be integers")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} out of range: found {y.min()}..{y.max()}, "
                         f"classes are 0..{num_classes - 1}")
    if every_class:
        counts = np.bincount(y, minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"{name}: {empty.size} classes have no shots "
                             f"(first: {empty[:5].tolist()})")
    return y


def val_split(val_features, val_labels, dim: int, num_classes: int, dtype):
    """Checked (val_x, val_y), or (None, None) when neither is given.

    Raises ValueError when only one of the two is given, or either is bad.
    """
    if val_features is None and val_labels is None:
        return None, None
    if val_features is None or val_labels is None:
        raise ValueError("give both val_features and val_labels, or neither")
    x = as_features(val_features, "val_features", dim=dim, dtype=dtype)
    y = as_labels(val_labels, x.shape[0], num_classes, "val_labels", every_class=False)
    return x, y


def check_number(name: str, value, low: float = None, integer: bool = False,
                 strictly: bool = False):
    """``value`` as int (``integer``) or float, at least ``low`` (above it when
    ``strictly``); ValueError naming the hyper-parameter otherwise."""
    try:
        v = int(value) if integer else float(value)
        ok = (not integer or v == value) and np.isfinite(v)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a finite number'}, got {value!r}")
    if low is not None and (v <= low if strictly else v < low):
        raise ValueError(f"{name} must be {'>' if strictly else '>='} {low}, got {value!r}")
    return v


def _check_kind(name: str, value, default) -> None:
    """ValueError unless ``value`` is of the kind ``default`` is (bool, int, float, str)."""
    if isinstance(default, (bool, np.bool_)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif isinstance(default, (int, float, np.number)):
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        check_number(name, value, integer=isinstance(default, (int, np.integer)))
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {value!r}")


def l2_normalize(x, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Rows (or ``axis``) scaled to unit L2 norm."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, computed in place over a shifted copy of ``z``."""
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


# --------------------------------------------------------------------------
# Head files: a JSON header plus arrays in one npz
# --------------------------------------------------------------------------

def _jsonable(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_jsonable(i) for i in v)
    return False


def _plain(v):
    """numpy scalars -> Python ones, so the header is JSON."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(i) for i in v)
    return v


def _tuples(v):
    """JSON lists back to tuples (sequence hyper-parameters are tuples)."""
    return tuple(_tuples(i) for i in v) if isinstance(v, list) else v


def read_head_file(path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(header, arrays) of a file written by ``Head.save``.

    Raises ValueError naming the file when it is not a jclip head file of
    this format version (an old or foreign npz, a truncated file, ...).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such head file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a bare .npy array, not an npz archive")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a jclip head file ({e})") from None
    if META_KEY not in arrays:
        raise ValueError(f"{path}: not a jclip head file (no {META_KEY} header; heads saved "
                         f"before head file format {FILE_VERSION} must be retrained)")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except ValueError as e:
        raise ValueError(f"{path}: unreadable head header ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: not a jclip head file (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: not a jclip head file")
    if meta.get("version") != FILE_VERSION:
        raise ValueError(f"{path}: head file format version {meta.get('version')}, this jclip "
                         f"reads version {FILE_VERSION}; retrain the head")
    return meta, arrays


class Head:
    """Base class of the few-shot heads (see the module docstring).

    Subclasses implement ``fit`` and ``logits`` and set ``_fitted``: the
    fitted attributes ``logits`` needs (checked by ``_check_fitted``).
    """

    _fitted: Tuple[str, ...] = ()
    # hyper-parameters that cannot be written to a file (e.g. a model); the
    # caller passes them again to the constructor before ``load``
    _unsaved_params: Tuple[str, ...] = ()

    # -- hyper-parameters --------------------------------------------------
    @classmethod
    def param_names(cls) -> List[str]:
        """The constructor's argument names, read from its signature (every
        head lists its hyper-parameters explicitly, as scikit-learn requires)."""
        names = []
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                raise TypeError(f"{cls.__name__}.__init__ takes *{p.name}; a head lists "
                                f"every hyper-parameter by name")
            if p.name != "self":
                names.append(p.name)
        return names

    @classmethod
    def param_defaults(cls) -> Dict[str, Any]:
        """{hyper-parameter: default} from the constructor's signature (the only
        place a default lives)."""
        params = inspect.signature(cls.__init__).parameters
        return {k: params[k].default for k in cls.param_names() if params[k].default is not params[k].empty}

    def check_params(self) -> Dict[str, Any]:
        """The hyper-parameters checked, without any data: {name: value}.

        Here each value is checked against the kind of its default (a number
        where the default is a number, a whole number where it is an int,
        true/false, text; None is always accepted where the default is None
        and never checked); heads add their ranges.  ``fit`` calls it first,
        ``python -m jclip.fewshot --set`` before any model is loaded.
        Raises ValueError naming the first bad hyper-parameter.
        """
        out = {}
        defaults = self.param_defaults()
        for name, value in self.get_params().items():
            default = defaults.get(name)
            if value is not None and default is not None:
                _check_kind(name, value, default)
            out[name] = value
        return out

    def get_params(self, deep: bool = False) -> Dict[str, Any]:
        """The constructor's arguments as stored (scikit-learn's ``get_params``).

        Parameters: deep: unused (heads hold no sub-estimators).
        Returns: {name: value}.
        """
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params) -> "Head":
        """Set hyper-parameters by name; takes effect at the next ``fit``.

        Returns: self.  Raises ValueError for a name the constructor does not take.
        """
        known = self.param_names()
        for name, value in params.items():
            if name not in known:
                raise ValueError(f"{type(self).__name__} has no hyper-parameter {name!r} "
                                 f"(known: {', '.join(known)})")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        def show(v):
            return f"array{np.shape(v)}" if isinstance(v, np.ndarray) else repr(v)
        shown = (f"{k}={show(v)}" for k, v in self.get_params().items() if k not in self._unsaved_params)
        return f"{type(self).__name__}({', '.join(shown)})"

    def _text_weights(self) -> np.ndarray:
        """The ``text_weights`` hyper-parameter, checked: (C, D) unit rows."""
        if self.text_weights is None:
            raise ValueError(f"{type(self).__name__} needs text_weights (C, D), the class "
                             f"text embeddings; pass them to the constructor")
        return as_features(self.text_weights, "text_weights")

    # -- prediction --------------------------------------------------------
    def _check_fitted(self) -> None:
        if any(getattr(self, k, None) is None for k in self._fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) class scores of (N, D) normalised features."""
        raise NotImplementedError

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) best class id per row (ties to the lower id)."""
        return self.logits(features).argmax(axis=1)

    def predict_topk(self, features: np.ndarray, k: int = 5) -> np.ndarray:
        """(N, k) class ids, best first (ties to the lower id)."""
        return topk_ids(self.logits(features), k)

    def score(self, features: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
        """Top-``k`` accuracy (a fraction) on labelled features."""
        return topk_accuracy(self.logits(features), labels, k)

    # -- files -------------------------------------------------------------
    def _fitted_state(self) -> Dict[str, Any]:
        """Every public attribute ending in ``_`` (what fit learned)."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _to_file(self) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
        """(header fields, arrays) holding the hyper-parameters and fitted state.

        Array hyper-parameters whose fitted copy ``<name>_`` is saved anyway
        (``text_weights``) are stored once, as the fitted copy."""
        meta: Dict[str, Any] = {"params": {}, "param_arrays": [], "params_from_fitted": [],
                                "fitted": {}, "fitted_arrays": [], "fitted_dicts": {}}
        arrays: Dict[str, np.ndarray] = {}
        fitted = self._fitted_state()
        for k, v in fitted.items():
            if isinstance(v, np.ndarray):
                meta["fitted_arrays"].append(k)
                arrays[f"fitted/{k}"] = v
            elif isinstance(v, dict) and all(isinstance(a, np.ndarray) for a in v.values()):
                keys = list(v)   # e.g. InMaP's snapshots {step: proxies}; keys kept by position
                meta["fitted_dicts"][k] = _plain(keys)
                for i, key in enumerate(keys):
                    arrays[f"fitted/{k}/{i}"] = v[key]
            elif isinstance(v, dict) and _jsonable(list(v)) and _jsonable(list(v.values())):
                meta["fitted"][k] = {"pairs": _plain([[a, b] for a, b in v.items()])}
            elif _jsonable(_plain(v)):
                meta["fitted"][k] = _plain(v)
            else:
                raise TypeError(f"{type(self).__name__}.{k}: cannot save a {type(v).__name__}")
        for k, v in self.get_params().items():
            if k in self._unsaved_params:
                continue
            if v is not None and isinstance(fitted.get(k + "_"), np.ndarray):
                meta["params_from_fitted"].append(k)       # e.g. text_weights: stored once
            elif isinstance(v, np.ndarray) or (v is not None and not _jsonable(_plain(v))):
                meta["param_arrays"].append(k)
                arrays[f"param/{k}"] = np.asarray(v)
            else:
                meta["params"][k] = _plain(v)
        return meta, arrays

    def save(self, path) -> str:
        """Write the hyper-parameters and fitted state to ``path`` (npz, atomically).

        Returns: the path.  Raises RuntimeError when the head is not fitted.
        """
        self._check_fitted()
        meta, arrays = self._to_file()
        meta = dict(format=FILE_FORMAT, version=FILE_VERSION, head=type(self).__name__, **meta)
        atomic_save_npz(path, dict(arrays, **{META_KEY: np.array(json.dumps(meta))}))
        return os.fspath(path)

    def _restore_params(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        for k, v in meta["params"].items():
            setattr(self, k, _tuples(v))
        for k in meta["param_arrays"]:
            setattr(self, k, arrays[f"param/{k}"])

    def _read_fitted(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in meta["fitted"].items():
            out[k] = {a: b for a, b in v["pairs"]} if isinstance(v, dict) else _tuples(v)
        for k in meta["fitted_arrays"]:
            out[k] = arrays[f"fitted/{k}"]
        for k, keys in meta["fitted_dicts"].items():
            out[k] = {key: arrays[f"fitted/{k}/{i}"] for i, key in enumerate(keys)}
        return out

    def _from_file(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray], path: str) -> None:
        """Restore from a checked header and its arrays (subclasses may check more)."""
        self._restore_params(meta, arrays)
        for k, v in self._read_fitted(meta, arrays).items():
            setattr(self, k, v)
        for k in meta["params_from_fitted"]:
            setattr(self, k, getattr(self, k + "_"))

    def load(self, path) -> "Head":
        """Restore a head written by ``save`` of the same class.

        Returns: self.  Raises ValueError naming the file when it is not a
        jclip head file, another format version, or another head class.
        """
        meta, arrays = read_head_file(path)
        if meta.get("head") != type(self).__name__:
            raise ValueError(f"{os.fspath(path)}: holds a {meta.get('head')} head, "
                             f"not a {type(self).__name__}")
        try:
            self._from_file(meta, arrays, os.fspath(path))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{os.fspath(path)}: damaged head file (missing {e})") from None
        missing = [k for k in self._fitted if getattr(self, k, None) is None]
        if missing:
            raise ValueError(f"{os.fspath(path)}: head file lacks {missing}")
        return self
