"""Linear probe: multinomial logistic regression on frozen normalised
features, solved by scikit-learn's ``LogisticRegression`` (L-BFGS), as in
the CLIP paper's linear-probe evaluation.

Objective:
    C * sum_i CE(W f_i + b, y_i) + ||W||^2 / 2      (b not penalised)
(scikit-learn minimises it divided by C * n), to a gradient tolerance,
warm-started along the C sweep (smallest C first).  Two classes are solved
as one logistic regression with 2C and split evenly between the two rows,
which is the same optimum of the same objective.  C is chosen on an
explicit validation split.
"""
import warnings
from typing import Optional, Sequence

import numpy as np

from ..metrics import topk_accuracy
from .base import Head, as_features, as_labels, check_number, val_split
from ..file_schema import Array, Float
from .head_file import Pairs


class LinearProbe(Head):
    """Multinomial logistic regression; C chosen on a validation split.

    Parameters: Cs: the inverse regularisation strengths tried (smallest
    first, warm-started); without a validation split Cs must hold one C.
    max_iter: L-BFGS iterations per C; gtol: the largest gradient entry of
    the objective above at which it stops (scikit-learn's ``tol`` is
    gtol / (C n), its objective being this one over C n).  num_classes: inferred as
    max(label) + 1 when None (the labels must then cover every class).
    Fitted: weight_ (C, D), bias_ (C,), C_, val_scores_ {C: accuracy}.
    """

    _fitted = ("weight_", "bias_")
    fitted_spec = {"weight_": Array("f", ("C", "D")), "bias_": Array("f", ("C",)), "C_": Float(),
                   "val_scores_": Pairs(Float(), Float(0, 1))}

    def __init__(self, Cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0), max_iter: int = 2000,
                 gtol: float = 1e-5, num_classes: Optional[int] = None):
        self._keep_params(locals())

    @staticmethod
    def _solve(model, x, y, c, num_classes, gtol):
        """(W, b) at the optimum for C = c; ``model`` (warm-started) keeps the last solution."""
        from sklearn.exceptions import ConvergenceWarning

        binary = num_classes == 2     # scikit-learn fits one row: the same optimum with 2C, halved
        c_fit = 2 * c if binary else c
        model.set_params(C=c_fit, tol=gtol / (c_fit * len(y)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            warnings.warn(f"LinearProbe: C={c} stopped after {int(np.max(model.n_iter_))} iterations "
                          "before its gradient tolerance", RuntimeWarning, stacklevel=3)
        w, b = np.ascontiguousarray(model.coef_), np.ascontiguousarray(model.intercept_)   # as a loaded file's
        if binary:
            w, b = np.concatenate([-w, w]) / 2, np.concatenate([-b, b]) / 2
        return w, b

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
        if num_classes > 1:
            from sklearn.linear_model import LogisticRegression
            model = LogisticRegression(max_iter=max_iter, warm_start=True)
        best_acc, self.val_scores_ = -1.0, {}
        for c in Cs:
            if num_classes == 1:      # nothing to separate: the loss is ||W||^2 / 2, so W = 0 (and b = 0)
                w, b = np.zeros((1, x.shape[1])), np.zeros(1)
            else:
                w, b = self._solve(model, x, y, c, num_classes, gtol)
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
