"""GDA (Wang et al., ICLR'24, "A Hard-to-Beat Baseline for Training-free CLIP-based
Adaptation"; mrflogs/ICLR24): Gaussian discriminant analysis on the shots.

Class means mu_k of the shots; one covariance shared by all classes,
estimated as the official code does: with C_c the shots minus their class
mean, S = cov(C_c) (torch's ``cov``: centred again, divided by n - 1),
precision P = D pinv((n - 1) S + tr(S) I).  Linear discriminant:
w_k = P mu_k, b_k = log(1/C) - mu_k^T P mu_k / 2, and

    logits = 100 x t^T + alpha (x W^T + b).

alpha: the first best of (1e-4, 1e-3, 0.01, 0.1, 1, 10, 100) on the
validation split; without one, 0.1 - the official code's value when no
candidate beats it (validation-free; the paper tunes alpha on validation data).
"""
from typing import Optional, Sequence

import numpy as np

from ..metrics import topk_accuracy
from .base import Head, as_features, check_number
from ..file_schema import Array, Float, Maybe


def gda_discriminant(x: np.ndarray, y: np.ndarray, num_classes: int):
    """(W (C, D), b (C,)) of the shared-covariance Gaussian model of shots x, labels y."""
    n, dim = x.shape
    counts = np.bincount(y, minlength=num_classes).astype(x.dtype)
    means = np.zeros((num_classes, dim), dtype=x.dtype)
    np.add.at(means, y, x)
    means /= counts[:, None]
    centred = x - means[y]
    centred = centred - centred.mean(axis=0)          # torch.cov centres its input again
    scatter = centred.T @ centred                     # (n - 1) cov
    cov_trace = np.trace(scatter) / (n - 1)
    precision = dim * np.linalg.pinv(scatter + cov_trace * np.eye(dim, dtype=x.dtype), hermitian=True)
    w = means @ precision
    b = np.log(1.0 / num_classes) - 0.5 * np.einsum("cd,cd->c", w, means)
    return w.astype(x.dtype), b.astype(x.dtype)


class GDA(Head):
    """GDA head: logits = logit_scale x t^T + alpha (x W^T + b).

    Parameters: text_weights (C, D); alphas: the validation grid;
    default_alpha: used without a validation split (0.1); logit_scale: 100.
    fit(features, labels, val_features=None, val_labels=None): the shots
    (at least 2 in all, every class with one).
    Fitted: weight_ (C, D), bias_ (C,), text_weights_, alpha_, logit_scale_;
    val_accuracy_ with a validation split.
    """

    _fitted = ("weight_", "bias_", "text_weights_", "alpha_", "logit_scale_")
    fitted_spec = {"weight_": Array("f", ("C", "D")), "bias_": Array("f", ("C",)),
                   "text_weights_": Array("f", ("C", "D")), "alpha_": Float(), "logit_scale_": Float(),
                   "val_accuracy_": Maybe(Float(0, 1))}

    def __init__(self, text_weights: Optional[np.ndarray] = None,
                 alphas: Sequence[float] = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0),
                 default_alpha: float = 0.1, logit_scale: float = 100.0):
        self._keep_params(locals())

    def check_params(self):
        """The hyper-parameters checked."""
        out = super().check_params()
        alphas = tuple(out["alphas"]) if not np.isscalar(out["alphas"]) else ()
        if not alphas:
            raise ValueError(f"alphas must be a non-empty list of numbers, got {out['alphas']!r}")
        out["alphas"] = tuple(check_number("alphas", a) for a in alphas)
        check_number("default_alpha", out["default_alpha"])
        check_number("logit_scale", out["logit_scale"])
        return out

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "GDA":
        """Estimate the class means and shared precision from the shots; pick alpha on validation."""
        p, t, x, y, vx, vy = self._labelled_shots(features, labels, val_features, val_labels)
        num_classes = t.shape[0]
        if x.shape[0] < 2:
            raise ValueError("GDA needs at least 2 shots to estimate a covariance")
        self.text_weights_ = t.astype(x.dtype)
        self.logit_scale_ = float(p["logit_scale"])
        self.weight_, self.bias_ = gda_discriminant(x, y, num_classes)
        self.alpha_, self.val_accuracy_ = float(p["default_alpha"]), None
        if vx is not None:
            text, gauss = self.logit_scale_ * (vx @ self.text_weights_.T), vx @ self.weight_.T + self.bias_
            best = 0.0                                 # as the official loop: strictly better than 0
            for alpha in p["alphas"]:
                acc = topk_accuracy(text + alpha * gauss, vy)
                if acc > best:
                    best, self.alpha_ = acc, float(alpha)
            self.val_accuracy_ = best
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = logit_scale x t^T + alpha (x W^T + b)."""
        self._check_fitted()
        x = as_features(features, dim=self.weight_.shape[1], dtype=self.weight_.dtype)
        return self.logit_scale_ * (x @ self.text_weights_.T) + self.alpha_ * (x @ self.weight_.T + self.bias_)
