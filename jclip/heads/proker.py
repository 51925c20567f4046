"""ProKeR, training-free (Bendou et al., CVPR'25, "A Kernel Perspective on
Few-Shot Adaptation of Large Vision-Language Models"): kernel ridge
regression of the residual between the shots' labels and the zero-shot
classifier, i.e. a proximal regulariser around zero-shot CLIP.

  k(a, b) = exp(-beta (1 - a . b))                  (RBF on the sphere)
  A = (K_SS / lambda + I)^-1 (Y - S t^T)            (|S| x C, closed form)
  logits(x) = x t^T + K_xS A

(the zero-shot term is the plain cosine, as in the official code).
beta, lambda: the first best on the validation split of
beta = linspace(0.5, 3, 20) x lambda = linspace(0.001, 1, 10) (beta outer);
without validation, the official "imagenet" setting: the values tuned on
ImageNet for that many shots per class (IMAGENET_HPS, the nearest shot
count; validation-free on the target data).
"""
from typing import Optional, Sequence

import numpy as np
import scipy.linalg

from ..metrics import topk_accuracy
from .base import Head, as_features, check_number
from ..file_schema import Array, Float, Maybe

# the official configs_proker/hyperparameters.json: {shots: (beta, lambda)}
IMAGENET_HPS = {1: (3.0, 0.05), 2: (2.6, 0.05), 4: (1.5, 0.05), 8: (1.66, 0.07), 16: (1.7, 0.1)}


def rbf_kernel(a: np.ndarray, b: np.ndarray, beta: float) -> np.ndarray:
    """(len(a), len(b)) = exp(-beta (1 - a b^T))."""
    return np.exp(-beta * (1.0 - a @ b.T))


def imagenet_hps(shots_per_class: float):
    """(beta, lambda) of the nearest ImageNet shot count (ties: the fewer shots)."""
    best = min(IMAGENET_HPS, key=lambda s: (abs(s - shots_per_class), s))
    return IMAGENET_HPS[best]


class ProKeR(Head):
    """Training-free ProKeR head.

    Parameters: text_weights (C, D); beta, lmbda: fixed values (None: the
    search on validation, or the ImageNet table without it); beta_grid /
    lmbda_grid: (start, stop, count) of the searched linspaces.
    fit(features, labels, val_features=None, val_labels=None): the shots
    (every class needs one).
    Fitted: support_ (S, D), coef_ (S, C), text_weights_, beta_, lmbda_;
    val_accuracy_ with a validation search.
    """

    _fitted = ("support_", "coef_", "text_weights_", "beta_", "lmbda_")
    fitted_spec = {"support_": Array("f", ("S", "D")), "coef_": Array("f", ("S", "C")),
                   "text_weights_": Array("f", ("C", "D")), "beta_": Float(), "lmbda_": Float(),
                   "val_accuracy_": Maybe(Float(0, 1))}

    def __init__(self, text_weights: Optional[np.ndarray] = None, beta: Optional[float] = None,
                 lmbda: Optional[float] = None, beta_grid: Sequence[float] = (0.5, 3.0, 20),
                 lmbda_grid: Sequence[float] = (0.001, 1.0, 10)):
        self._keep_params(locals())

    def check_params(self):
        """The hyper-parameters checked."""
        out = super().check_params()
        if out["beta"] is not None:
            check_number("beta", out["beta"], 0.0)
        if out["lmbda"] is not None:
            check_number("lmbda", out["lmbda"], 0.0, strictly=True)
        for name in ("beta_grid", "lmbda_grid"):
            v = out[name]
            if np.isscalar(v) or len(tuple(v)) != 3:
                raise ValueError(f"{name} must be (start, stop, count), got {v!r}")
            start, stop = (check_number(name, e, 0.0) for e in tuple(v)[:2])
            count = check_number(name, tuple(v)[2], 1, integer=True)
            if name == "lmbda_grid" and min(start, stop) <= 0:
                raise ValueError(f"lmbda_grid values must be > 0, got {v!r}")
            out[name] = np.linspace(start, stop, count)
        return out

    @staticmethod
    def _coef(support, residual, beta, lmbda):
        """(K_SS / lambda + I)^-1 residual."""
        system = rbf_kernel(support, support, beta) / lmbda + np.eye(len(support), dtype=support.dtype)
        return scipy.linalg.solve(system, residual, assume_a="pos")

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "ProKeR":
        """Solve the kernel ridge regression on the shots (beta, lambda as the class docstring)."""
        p, t, s, y, vx, vy = self._labelled_shots(features, labels, val_features, val_labels)
        num_classes = t.shape[0]
        t = t.astype(s.dtype)
        residual = -(s @ t.T)
        residual[np.arange(len(y)), y] += 1.0
        beta, lmbda = p["beta"], p["lmbda"]
        self.val_accuracy_ = None
        if vx is not None and (beta is None or lmbda is None):
            betas = p["beta_grid"] if beta is None else [beta]
            lmbdas = p["lmbda_grid"] if lmbda is None else [lmbda]
            text_val = vx @ t.T
            best = (0.0, None, None)                   # as the official loop: strictly better than 0
            for b in betas:
                k_ss = rbf_kernel(s, s, b)
                k_vs = rbf_kernel(vx, s, b)
                eye = np.eye(len(s), dtype=s.dtype)
                for lm in lmbdas:
                    coef = scipy.linalg.solve(k_ss / lm + eye, residual, assume_a="pos")
                    acc = topk_accuracy(text_val + k_vs @ coef, vy)
                    if acc > best[0]:
                        best = (acc, float(b), float(lm))
            if best[1] is not None:
                self.val_accuracy_, beta, lmbda = best
        table = imagenet_hps(len(y) / num_classes)
        beta = table[0] if beta is None else float(beta)
        lmbda = table[1] if lmbda is None else float(lmbda)
        self.coef_ = self._coef(s, residual, beta, lmbda).astype(s.dtype)
        self.support_, self.text_weights_ = s, t
        self.beta_, self.lmbda_ = beta, lmbda
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = x t^T + k(x, S) A."""
        self._check_fitted()
        x = as_features(features, dim=self.support_.shape[1], dtype=self.support_.dtype)
        return x @ self.text_weights_.T + rbf_kernel(x, self.support_, self.beta_) @ self.coef_
