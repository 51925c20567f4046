"""LP++ (Huang, Shakeri et al., CVPR'24; FereshteShakeri/FewShot-CLIP-Strong-Baseline).

logits l_ik = f_i . w_k + b_k + alpha_k f_i . t_k

As in the official ``LinearProbe_P2``:
- W starts as the per-class SUM of support features; b keeps nn.Linear's
  default init U(-1/sqrt(D), 1/sqrt(D)) (seeded here);
- alpha_k starts at 250 x mean over classes of the mean cosine between a
  class's support features and its text weight;
- lr_w = 4N / lambda_max(F^T F), lr_alpha = N / (4 max_k sum_i (f_i . t_k)^2);
- full-batch SGD, momentum 0.9, on mean cross-entropy for (W, b), 300 epochs;
  alpha takes a plain gradient step every 10 epochs.  The official code never
  zeroes alpha's gradient, so each alpha step uses the gradient summed over
  all epochs so far; ``accumulate_alpha_grad=True`` keeps that behaviour;
- model selection: after every epoch, the state with the best accuracy on the
  validation split (ties: the later epoch, as the official ``>=``).
"""
from typing import Optional

import numpy as np
import scipy.linalg

from ..metrics import topk_accuracy
from .base import Head, as_features, as_labels, check_number, softmax, val_split
from ..file_schema import Array, Float, Int, Maybe


def lpp_init_weights(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, D) per-class sums of support features."""
    w = np.zeros((num_classes, features.shape[1]), dtype=features.dtype)
    np.add.at(w, labels, features)
    return w


def lpp_init_alpha(features: np.ndarray, labels: np.ndarray, text_weights: np.ndarray,
                   scale: float = 250.0) -> float:
    """scale x mean_k (mean over class k's shots of f_i . t_k)."""
    num_classes = text_weights.shape[0]
    own_cos = np.einsum("ij,ij->i", features, text_weights[labels])
    per_class = np.bincount(labels, own_cos, minlength=num_classes) / \
        np.bincount(labels, minlength=num_classes)
    return float(scale * per_class.mean())


def lpp_lr_w(features: np.ndarray) -> float:
    """4N / lambda_max(F^T F)."""
    gram = (features.T @ features).astype(np.float64)
    d = gram.shape[0]
    lam = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[d - 1, d - 1])[0]
    return float(4 * features.shape[0] / lam)


def lpp_lr_alpha(features: np.ndarray, text_weights: np.ndarray) -> float:
    """N / (4 max_k sum_i (f_i . t_k)^2)."""
    ft = (features @ text_weights.T).astype(np.float64)
    return float(features.shape[0] / (4 * (ft * ft).sum(axis=0).max()))


class LPPlusPlus(Head):
    """LP++ head: logits = f W^T + b + alpha * (f t^T).

    Parameters: text_weights (C, D) unit class embeddings; epochs (300),
    momentum (0.9), alpha_every (10), alpha_scale (250),
    accumulate_alpha_grad (the official behaviour), seed (the bias init).
    Fitted: weight_ (C, D), bias_ (C,), alpha_ (C,), text_weights_; lr_w_,
    lr_alpha_, init_alpha_; with a validation split best_epoch_ and
    val_accuracy_.
    """

    _fitted = ("weight_", "bias_", "alpha_", "text_weights_")
    fitted_spec = {"weight_": Array("f", ("C", "D")), "bias_": Array("f", ("C",)),
                   "alpha_": Array("f", ("C",)), "text_weights_": Array("f", ("C", "D")),
                   "lr_w_": Float(), "lr_alpha_": Float(), "init_alpha_": Float(),
                   "best_epoch_": Maybe(Int(0, 1 << 62)), "val_accuracy_": Maybe(Float(0, 1))}

    def __init__(self, text_weights: Optional[np.ndarray] = None, epochs: int = 300,
                 momentum: float = 0.9, alpha_every: int = 10, alpha_scale: float = 250.0,
                 accumulate_alpha_grad: bool = True, seed: int = 0):
        self._keep_params(locals())

    def check_params(self):
        """The schedule's settings, checked (see ``Head.check_params``)."""
        p = super().check_params()
        p["epochs"] = check_number("epochs", p["epochs"], 0, integer=True)
        p["momentum"] = check_number("momentum", p["momentum"], 0.0)
        p["alpha_every"] = check_number("alpha_every", p["alpha_every"], 1, integer=True)
        p["alpha_scale"] = check_number("alpha_scale", p["alpha_scale"])
        return p

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "LPPlusPlus":
        """Train on (N, D) normalised shots and their labels (every class needs one).

        Parameters: val_features / val_labels: the split that picks the epoch
        (without it the last epoch is kept).
        Returns: self.
        """
        p = self.check_params()
        epochs, momentum, alpha_every, alpha_scale = (
            p[k] for k in ("epochs", "momentum", "alpha_every", "alpha_scale"))
        accumulate = bool(self.accumulate_alpha_grad)
        t = self._text_weights()
        num_classes, dim = t.shape
        x = as_features(features, dim=dim)
        t = t.astype(x.dtype)
        y = as_labels(labels, x.shape[0], num_classes)
        vx, vy = val_split(val_features, val_labels, dim, num_classes, x.dtype)
        if vx is not None:
            v_text = vx @ t.T

        n = x.shape[0]
        rng = np.random.default_rng(self.seed)
        bound = 1.0 / np.sqrt(dim)
        w = lpp_init_weights(x, y, num_classes)
        b = rng.uniform(-bound, bound, num_classes).astype(x.dtype)
        alpha = np.full(num_classes, lpp_init_alpha(x, y, t, alpha_scale), x.dtype)
        self.lr_w_ = lr_w = lpp_lr_w(x)
        self.lr_alpha_ = lr_alpha = lpp_lr_alpha(x, t)
        self.init_alpha_ = float(alpha[0])

        x_text = x @ t.T                          # (N, C), fixed: text is frozen
        rows = np.arange(n)
        buf_w = buf_b = None
        alpha_grad = np.zeros_like(alpha)
        best_acc, best = -1.0, (w.copy(), b.copy(), alpha.copy())
        self.best_epoch_ = self.val_accuracy_ = None
        for epoch in range(epochs):
            g = softmax(x @ w.T + b + alpha * x_text)
            g[rows, y] -= 1.0
            g /= n                                 # d(mean CE)/d logits
            grad_w, grad_b = g.T @ x, g.sum(axis=0)
            grad_alpha = np.einsum("ij,ij->j", g, x_text)
            alpha_grad = alpha_grad + grad_alpha if accumulate else grad_alpha
            # torch SGD momentum (no dampening): buf = m*buf + g; p -= lr*buf
            buf_w = grad_w if buf_w is None else momentum * buf_w + grad_w
            buf_b = grad_b if buf_b is None else momentum * buf_b + grad_b
            w -= lr_w * buf_w
            b -= lr_w * buf_b
            if (epoch + 1) % alpha_every == 0:
                alpha -= lr_alpha * alpha_grad
            if vx is None:
                best = (w, b, alpha)
                continue
            acc = topk_accuracy(vx @ w.T + b + alpha * v_text, vy)
            if acc >= best_acc:
                best_acc, best = acc, (w.copy(), b.copy(), alpha.copy())
                self.best_epoch_ = epoch
        if vx is not None:
            self.val_accuracy_ = best_acc
        self.weight_, self.bias_, self.alpha_ = best
        self.text_weights_ = t
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = f W^T + b + alpha * (f t^T)."""
        self._check_fitted()
        x = as_features(features, dim=self.weight_.shape[1], dtype=self.weight_.dtype)
        return x @ self.weight_.T + self.bias_ + self.alpha_ * (x @ self.text_weights_.T)
