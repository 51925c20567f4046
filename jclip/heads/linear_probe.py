"""Linear probe: multinomial logistic regression on frozen normalised features.

Objective (scikit-learn's convention, so C means the same thing):
    C * sum_i CE(W f_i + b, y_i) + ||W||^2 / 2      (b not penalised)
solved full-batch with scipy's L-BFGS-B on the analytic gradient, to a
gradient tolerance, warm-started along the C sweep (smallest C first).
C is chosen on an explicit validation split.
"""
import warnings

import numpy as np
import scipy.optimize

from .base import Head, as_features, as_labels, softmax


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
    """fit(features, labels, val_features=None, val_labels=None).

    Without a validation split, ``Cs`` must hold a single C.
    num_classes: inferred as max(label) + 1 when not given.
    """

    _state_keys = ("weight", "bias", "C")

    def __init__(self, Cs=(0.1, 1.0, 10.0, 100.0, 1000.0), max_iter=2000, gtol=1e-5,
                 num_classes=None):
        self.num_classes = num_classes
        self.Cs = tuple(sorted(float(c) for c in np.atleast_1d(Cs)))
        self.max_iter, self.gtol = int(max_iter), float(gtol)
        self.weight = self.bias = self.C = None

    def _solve(self, x, y, c, num_classes, start):
        res = scipy.optimize.minimize(
            _objective, start, args=(x, y, c, num_classes), jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": self.gtol, "ftol": 0.0})
        grad_norm = float(np.abs(res.jac).max())
        if not res.success and grad_norm > self.gtol * max(1.0, c):
            warnings.warn(f"LinearProbe: C={c} stopped after {res.nit} iterations "
                          f"with gradient {grad_norm:.3g} ({res.message})",
                          RuntimeWarning, stacklevel=3)
        return res.x

    def fit(self, features, labels, val_features=None, val_labels=None):
        x = as_features(features).astype(np.float64)
        num_classes = self.num_classes
        if num_classes is None:     # infer; labels must then cover every class
            num_classes = int(np.max(labels)) + 1 if np.size(labels) else 0
        y = as_labels(labels, x.shape[0], num_classes)
        if (val_features is None) != (val_labels is None):
            raise ValueError("give both val_features and val_labels, or neither")
        if val_features is None and len(self.Cs) > 1:
            raise ValueError("choosing C needs a validation split (val_features, val_labels)")
        if val_features is not None:
            vx = as_features(val_features, "val_features", dim=x.shape[1], dtype=np.float64)
            vy = as_labels(val_labels, vx.shape[0], num_classes, "val_labels",
                           every_class=False)
        dim = x.shape[1]
        params = np.zeros(num_classes * (dim + 1))
        best_acc, self.val_scores_ = -1.0, {}
        for c in self.Cs:
            params = self._solve(x, y, c, num_classes, params)
            w = params[:num_classes * dim].reshape(num_classes, dim)
            b = params[num_classes * dim:]
            acc = float(((vx @ w.T + b).argmax(1) == vy).mean()) if val_features is not None else 0.0
            self.val_scores_[c] = acc
            if acc > best_acc:
                best_acc, self.C = acc, c
                self.weight, self.bias = w.astype(np.float32), b.astype(np.float32)
        return self

    def logits(self, features):
        self._check_fitted()
        x = as_features(features, dim=self.weight.shape[1])
        return x @ self.weight.T.astype(x.dtype) + self.bias.astype(x.dtype)
