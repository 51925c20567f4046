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
import numpy as np
import scipy.linalg

from .base import Head, as_features, as_labels, softmax


def lpp_init_weights(features, labels, num_classes):
    """(C, D) per-class sums of support features."""
    w = np.zeros((num_classes, features.shape[1]), dtype=features.dtype)
    np.add.at(w, labels, features)
    return w


def lpp_init_alpha(features, labels, text_weights, scale=250.0):
    """scale x mean_k (mean over class k's shots of f_i . t_k)."""
    num_classes = text_weights.shape[0]
    own_cos = np.einsum("ij,ij->i", features, text_weights[labels])
    per_class = np.bincount(labels, own_cos, minlength=num_classes) / \
        np.bincount(labels, minlength=num_classes)
    return float(scale * per_class.mean())


def lpp_lr_w(features):
    """4N / lambda_max(F^T F)."""
    gram = (features.T @ features).astype(np.float64)
    d = gram.shape[0]
    lam = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[d - 1, d - 1])[0]
    return float(4 * features.shape[0] / lam)


def lpp_lr_alpha(features, text_weights):
    """N / (4 max_k sum_i (f_i . t_k)^2)."""
    ft = (features @ text_weights.T).astype(np.float64)
    return float(features.shape[0] / (4 * (ft * ft).sum(axis=0).max()))


class LPPlusPlus(Head):
    """LP++ head.  fit(features, labels, text_weights, val_features, val_labels)."""

    _state_keys = ("weight", "bias", "alpha", "text_weights")

    def __init__(self, epochs=300, momentum=0.9, alpha_every=10,
                 alpha_scale=250.0, accumulate_alpha_grad=True, seed=0):
        self.epochs, self.momentum = int(epochs), float(momentum)
        self.alpha_every, self.alpha_scale = int(alpha_every), float(alpha_scale)
        self.accumulate_alpha_grad = bool(accumulate_alpha_grad)
        self.seed = seed
        self.weight = self.bias = self.alpha = self.text_weights = None

    def fit(self, features, labels, text_weights, val_features=None, val_labels=None):
        t = as_features(text_weights, "text_weights")
        num_classes, dim = t.shape
        x = as_features(features, dim=dim)
        t = t.astype(x.dtype)
        y = as_labels(labels, x.shape[0], num_classes)
        if (val_features is None) != (val_labels is None):
            raise ValueError("give both val_features and val_labels, or neither")
        if val_features is not None:
            vx = as_features(val_features, "val_features", dim=dim, dtype=x.dtype)
            vy = as_labels(val_labels, vx.shape[0], num_classes, "val_labels",
                           every_class=False)
            v_text = vx @ t.T

        n = x.shape[0]
        rng = np.random.default_rng(self.seed)
        bound = 1.0 / np.sqrt(dim)
        w = lpp_init_weights(x, y, num_classes)
        b = rng.uniform(-bound, bound, num_classes).astype(x.dtype)
        alpha = np.full(num_classes, lpp_init_alpha(x, y, t, self.alpha_scale), x.dtype)
        self.lr_w_ = lr_w = lpp_lr_w(x)
        self.lr_alpha_ = lr_alpha = lpp_lr_alpha(x, t)
        self.init_alpha_ = float(alpha[0])

        x_text = x @ t.T                          # (N, C), fixed: text is frozen
        rows = np.arange(n)
        buf_w = buf_b = None
        alpha_grad = np.zeros_like(alpha)
        best_acc, best = -1.0, (w.copy(), b.copy(), alpha.copy())
        for epoch in range(self.epochs):
            g = softmax(x @ w.T + b + alpha * x_text)
            g[rows, y] -= 1.0
            g /= n                                 # d(mean CE)/d logits
            grad_w, grad_b = g.T @ x, g.sum(axis=0)
            grad_alpha = np.einsum("ij,ij->j", g, x_text)
            alpha_grad = alpha_grad + grad_alpha if self.accumulate_alpha_grad else grad_alpha
            # torch SGD momentum (no dampening): buf = m*buf + g; p -= lr*buf
            buf_w = grad_w if buf_w is None else self.momentum * buf_w + grad_w
            buf_b = grad_b if buf_b is None else self.momentum * buf_b + grad_b
            w -= lr_w * buf_w
            b -= lr_w * buf_b
            if (epoch + 1) % self.alpha_every == 0:
                alpha -= lr_alpha * alpha_grad
            if val_features is None:
                best = (w, b, alpha)
                continue
            acc = float(((vx @ w.T + b + alpha * v_text).argmax(1) == vy).mean())
            if acc >= best_acc:
                best_acc, best = acc, (w.copy(), b.copy(), alpha.copy())
                self.best_epoch_ = epoch
        if val_features is not None:
            self.val_accuracy_ = best_acc
        self.weight, self.bias, self.alpha = best
        self.text_weights = t
        return self

    def logits(self, features):
        self._check_fitted()
        x = as_features(features, dim=self.weight.shape[1], dtype=self.weight.dtype)
        return x @ self.weight.T + self.bias + self.alpha * (x @ self.text_weights.T)
