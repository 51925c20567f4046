"""Linear probe: multinomial logistic regression on frozen normalised features.

Objective (scikit-learn's convention, so C means the same thing):
    C * sum_i CE(W f_i + b, y_i) + ||W||^2 / 2      (b not penalised)
solved full-batch with scipy's L-BFGS-B on the analytic gradient, to a
gradient tolerance, warm-started along the C sweep (smallest C first).
C is chosen on an explicit validation split.
"""
import warnings
from typing import Optional, Sequence

import numpy as np
import scipy.optimize

from ..metrics import topk_accuracy
from .base import Head, as_features, as_labels, check_number, softmax, val_split
from ..file_schema import Array, Float
from .head_file import Pairs


def _objective(params, x, y, c, num_classes):
    dim = x.shape[1]
    w = params[:num_classes * dim].reshape(num_classes, dim)
    b = params[num_classes * dim:]
    z = x @ w.T + b
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    loss = c * (lse - z[np.arange(len(y)), y]).sum() + 0.5 * np.einsum("ij,ij->", w, w)
    g = softmax(z)
    g[np.arange(len(y)), y] -= 1.0
    grad_w = c * (g.T @ x) + w
    grad_b = c * g.sum(axis=0)
    return loss, np.concatenate([grad_w.ravel(), grad_b])


class LinearProbe(Head):
    """Multinomial logistic regression; C chosen on a validation split.

    Parameters: Cs: the inverse regularisation strengths tried (smallest
    first, warm-started); without a validation split Cs must hold one C.
    max_iter, gtol: L-BFGS-B's limits.  num_classes: inferred as
    max(label) + 1 when None (the labels must then cover every class).
    Fitted: weight_ (C, D), bias_ (C,), C_, val_scores_ {C: accuracy}.
    """

    _fitted = ("weight_", "bias_")
    fitted_spec = {"weight_": Array("f", ("C", "D")), "bias_": Array("f", ("C",)), "C_": Float(),
                   "val_scores_": Pairs(Float(), Float(0, 1))}

    def __init__(self, Cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0), max_iter: int = 2000,
                 gtol: float = 1e-5, num_classes: Optional[int] = None):
        self.Cs = Cs
        self.max_iter = max_iter
        self.gtol = gtol
        self.num_classes = num_classes

    def _solve(self, x, y, c, num_classes, start, max_iter, gtol):
        res = scipy.optimize.minimize(
            _objective, start, args=(x, y, c, num_classes), jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": gtol, "ftol": 0.0})
        grad_norm = float(np.abs(res.jac).max())
        if not res.success and grad_norm > gtol * max(1.0, c):
            warnings.warn(f"LinearProbe: C={c} stopped after {res.nit} iterations "
                          f"with gradient {grad_norm:.3g} ({res.message})",
                          RuntimeWarning, stacklevel=3)
        return res.x

    def check_params(self):
        """The C grid (sorted) and the solver's limits, checked (see ``Head.check_params``)."""
        p = super().check_params()
        p["Cs"] = tuple(sorted(check_number("Cs", c, 0.0, strictly=True) for c in np.atleast_1d(p["Cs"])))
        if not p["Cs"]:
            raise ValueError("Cs is empty")
        p["max_iter"] = check_number("max_iter", p["max_iter"], 1, integer=True)
        p["gtol"] = check_number("gtol", p["gtol"], 0.0, strictly=True)
        return p

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "LinearProbe":
        """Fit on (N, D) normalised features and (N,) labels.

        Parameters: val_features / val_labels: the split that picks C.
        Returns: self.
        """
        p = self.check_params()
        Cs, max_iter, gtol = p["Cs"], p["max_iter"], p["gtol"]
        x = as_features(features).astype(np.float64)
        if labels is None:
            raise ValueError("LinearProbe needs labels")
        num_classes = self.num_classes
        if num_classes is None:     # infer; labels must then cover every class
            num_classes = int(np.max(labels)) + 1 if np.size(labels) else 0
        num_classes = check_number("num_classes", num_classes, 1, integer=True)
        y = as_labels(labels, x.shape[0], num_classes)
        vx, vy = val_split(val_features, val_labels, x.shape[1], num_classes, np.float64)
        if vx is None and len(Cs) > 1:
            raise ValueError("choosing C needs a validation split (val_features, val_labels)")
        dim = x.shape[1]
        params = np.zeros(num_classes * (dim + 1))
        best_acc, self.val_scores_ = -1.0, {}
        for c in Cs:
            params = self._solve(x, y, c, num_classes, params, max_iter, gtol)
            w = params[:num_classes * dim].reshape(num_classes, dim)
            b = params[num_classes * dim:]
            acc = topk_accuracy(vx @ w.T + b, vy) if vx is not None else 0.0
            self.val_scores_[c] = acc
            if acc > best_acc:
                best_acc, self.C_ = acc, c
                self.weight_, self.bias_ = w.astype(np.float32), b.astype(np.float32)
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = features . weight^T + bias."""
        self._check_fitted()
        x = as_features(features, dim=self.weight_.shape[1])
        return x @ self.weight_.T.astype(x.dtype) + self.bias_.astype(x.dtype)
