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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..file_schema import Array
from ..metrics import topk_accuracy, topk_ids
from . import head_file, registry

# How far a row norm may stray from 1 before features count as not normalised
# (fp16 features that were normalised in fp16 land within ~1e-3).
NORM_TOLERANCE = 1e-2

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
    elif isinstance(default, (tuple, list)):
        # a grid or a weight list: a sequence (never text), its items of the default items' kind
        if value is None or isinstance(value, (str, bytes, dict)) or \
                not isinstance(value, (tuple, list, np.ndarray)) or np.ndim(value) != 1:
            raise ValueError(f"{name} must be a list like {list(default)!r}, got {value!r}")
        numbers = [d for d in default if isinstance(d, (int, float)) and not isinstance(d, bool)]
        if default and len(numbers) == len(default):
            kind = 0 if all(isinstance(d, int) for d in numbers) else 0.0
            for item in value:
                _check_kind(name, item, kind)


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


class Head:
    """Base class of the few-shot heads (see the module docstring).

    Subclasses implement ``fit`` and ``logits`` and set ``_fitted``: the
    fitted attributes ``logits`` needs (checked by ``_check_fitted``).
    """

    _fitted: Tuple[str, ...] = ()
    # hyper-parameters that cannot be written to a file (e.g. a model); the
    # caller passes them again to the constructor before ``load``
    _unsaved_params: Tuple[str, ...] = ()
    # a hyper-parameter holding a fitted start head, carried inside the file
    _head_params: Tuple[str, ...] = ()
    # the file's schema (heads/head_file.py): fitted attribute -> spec, a
    # hyper-parameter's spec or array spec where its default's kind is not enough
    fitted_spec: Dict[str, Any] = {}
    param_spec: Dict[str, Any] = {}
    param_array_spec: Dict[str, Any] = {"text_weights": Array("f", ("C", "D"))}
    identity_spec: Dict[str, Any] = {}
    file_container = head_file.NpzContainer

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
        true/false, text, a list of the default's kind where the default is a
        list; None is always accepted where the default is None and never
        checked); heads add their ranges.  ``fit`` calls it first,
        ``python -m jclip.fewshot --set`` before any model is loaded.
        Raises ValueError naming the first bad hyper-parameter.
        """
        out = {}
        defaults = self.param_defaults()
        for name, value in self.get_params().items():
            default = defaults.get(name)
            if default is not None and (value is not None or isinstance(default, (tuple, list))):
                _check_kind(name, value, default)
            out[name] = value
        return out

    def _keep_params(self, args: Dict[str, Any]) -> None:
        """Store every constructor argument as given (``self._keep_params(locals())``
        as a constructor's only work: scikit-learn's rule, nothing checked or
        derived there; ``check_params`` and ``fit`` do that)."""
        known = set(self.param_names())
        for name, value in args.items():     # a parent's constructor gets a subset of them
            if name in known:
                setattr(self, name, value)

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

    def _labelled_shots(self, features, labels, val_features, val_labels) -> Tuple:
        """(checked hyper-parameters, text weights (C, D), shots (N, D), their
        labels (N,), validation features and labels or (None, None)): what a
        head that learns from labelled shots checks before anything else."""
        params = self.check_params()
        text = self._text_weights()
        num_classes, dim = text.shape
        x = as_features(features, "features (shots)", dim=dim)
        y = as_labels(labels, x.shape[0], num_classes, "labels (of the shots)")
        vx, vy = val_split(val_features, val_labels, dim, num_classes, x.dtype)
        return params, text, x, y, vx, vy

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

    # -- files (one serializer: heads/head_file.py, driven by the declarations) --
    def _file_identity(self) -> Dict[str, str]:
        """What the file records the head was learned on (keys of ``identity_spec``)."""
        return {}

    def _check_identity(self, recorded: Dict[str, str], path: str) -> None:
        """Refuse a file learned on something other than what this head holds."""

    def _after_load(self, path: str) -> None:
        """Rebuild what is derived, not saved (e.g. a prompt table from the model)."""

    def save(self, path) -> str:
        """Write the hyper-parameters and every declared fitted attribute to
        ``path`` (atomically).  Returns: the path.  Raises RuntimeError when
        the head is not fitted."""
        self._check_fitted()
        return head_file.save(self, path)

    def load(self, path, check_identity: bool = True) -> "Head":
        """Restore a head written by ``save`` of the same class; the whole file
        is checked against the class's schema before anything is set.

        Parameters: check_identity: refuse a file learned on another model
        (heads that record one).  Returns: self.  Raises FileFormatError (a
        ValueError) naming the file and the key."""
        return head_file.load(self, path, registry.head_class, check_identity)
