"""The interface every few-shot head shares, and the input checks they use.

Heads work on L2-normalised features held in numpy arrays.  They compute in
the dtype they are given (float32 stays float32 for speed, float64 stays
float64 for exact checks); any other dtype is converted to float32.
"""

import numpy as np

from ..io import atomic_save_npz

# How far a row norm may stray from 1 before features count as not normalised
# (fp16 features that were normalised in fp16 land within ~1e-3).
NORM_TOLERANCE = 1e-2


def as_features(x, name="features", dim=None, normalised=True, dtype=None):
    """Check a (N, D) feature array and return it as a float array.

    Raises ValueError for the wrong rank or width, non-finite values, and
    rows that are not unit length when ``normalised`` is asked for.
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


def as_labels(y, n, num_classes, name="labels", every_class=True):
    """Check integer labels of length ``n`` in [0, num_classes)."""
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


def l2_normalize(x, axis=-1, eps=1e-12):
    """Rows (or ``axis``) scaled to unit L2 norm."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def topk_ids(logits, k):
    """(N, k) class ids, best first; ties go to the lower id (stable)."""
    logits = np.asarray(logits)
    k = int(k)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in 1..{logits.shape[1]}, got {k}")
    # argpartition keeps this O(N C) for large C; then sort only the k kept
    if k < logits.shape[1]:
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(logits.shape[1]), logits.shape).copy()
    vals = np.take_along_axis(logits, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)



class Head:
    """Base class: scikit-learn style few-shot classifier on features.

    Subclasses set ``_state_keys`` (names of fitted array attributes) and
    implement ``fit`` and ``logits``.
    """

    _state_keys = ()

    def _check_fitted(self):
        if any(getattr(self, k, None) is None for k in self._state_keys):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

    def logits(self, features):
        raise NotImplementedError

    def predict(self, features):
        return self.logits(features).argmax(axis=1)

    def predict_topk(self, features, k=5):
        return topk_ids(self.logits(features), k)

    def state_dict(self):
        self._check_fitted()
        return {k: np.asarray(getattr(self, k)) for k in self._state_keys}

    def load_state_dict(self, state):
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise ValueError(f"{type(self).__name__} state is missing {missing}")
        for k in self._state_keys:
            v = np.asarray(state[k])
            setattr(self, k, v.item() if v.ndim == 0 else v)
        return self

    def save(self, path):
        atomic_save_npz(path, self.state_dict())

    def load(self, path):
        with np.load(path, allow_pickle=False) as z:
            return self.load_state_dict({k: z[k] for k in z.files})
