"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV'22; gaopengcuhk/Tip-Adapter).

logits = logit_scale * f . W_t^T + alpha * exp(-beta (1 - f . K^T)) V

K: cache keys (few-shot features; averaging augmented passes is the feature
extractor's job), V: one-hot cache labels.  beta and alpha are searched on a
validation split over the official grids ``i * (scale - 0.1) / steps + 0.1``
(ImageNet defaults: beta scale 7 x 200 steps, alpha scale 3 x 20 steps).
Tip-Adapter-F also trains the keys (AdamW, cosine schedule), keeping the epoch
that does best on the validation split (the official code picks it on test).
"""
from typing import Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ..metrics import topk_accuracy
from .base import Head, as_features, as_labels, check_number, softmax, val_split
from ..file_schema import Array, Float, Maybe


def search_grid(scale: float, steps: int) -> np.ndarray:
    """The official Tip-Adapter grid: [0.1, scale) in ``steps`` even steps."""
    return np.array([i * (scale - 0.1) / steps + 0.1 for i in range(steps)])


class TipAdapter(Head):
    """Training-free Tip-Adapter with beta/alpha chosen on a validation split.

    Parameters: text_weights (C, D) unit class embeddings; beta_scale /
    beta_steps and alpha_scale / alpha_steps: the search grids; init_beta /
    init_alpha: used as given without a validation split (and by
    Tip-Adapter-F's training); logit_scale: CLIP's 100.
    fit(features, labels, val_features=None, val_labels=None): features and
    labels are the cache keys and their classes (every class needs one).
    Fitted: keys_, key_labels_, text_weights_, beta_, alpha_, val_accuracy_.
    """

    _fitted = ("keys_", "key_labels_", "text_weights_", "beta_", "alpha_", "logit_scale_")
    fitted_spec = {"keys_": Array("f", ("N", "D")), "key_labels_": Array("i", ("N",)),
                   "text_weights_": Array("f", ("C", "D")), "beta_": Float(), "alpha_": Float(),
                   "logit_scale_": Float(), "val_accuracy_": Maybe(Float(0, 1))}

    def __init__(self, text_weights: Optional[np.ndarray] = None, beta_scale: float = 7.0,
                 beta_steps: int = 200, alpha_scale: float = 3.0, alpha_steps: int = 20,
                 init_beta: float = 1.0, init_alpha: float = 1.17, logit_scale: float = 100.0):
        self._keep_params(locals())

    def check_params(self):
        """The search grids and initial values, checked (see ``Head.check_params``)."""
        p = super().check_params()
        for name in ("beta_scale", "alpha_scale", "init_beta", "init_alpha", "logit_scale"):
            p[name] = check_number(name, p[name])
        for name in ("beta_steps", "alpha_steps"):
            p[name] = check_number(name, p[name], 1, integer=True)
        return p

    # -- shared pieces -----------------------------------------------------
    def _check_inputs(self, cache_keys, cache_labels, val_features, val_labels):
        """Check hyper-parameters and data; store keys_, key_labels_,
        text_weights_, logit_scale_ and beta_/alpha_ at their initial values.
        Returns the checked validation split (or (None, None))."""
        p = TipAdapter.check_params(self)
        self.logit_scale_ = p["logit_scale"]
        text_weights = self._text_weights()
        num_classes, dim = text_weights.shape
        keys = as_features(cache_keys, "cache keys (features)", dim=dim)
        self.key_labels_ = as_labels(cache_labels, keys.shape[0], num_classes, "cache labels (labels)")
        self.keys_, self.text_weights_ = keys, text_weights.astype(keys.dtype)
        self.beta_, self.alpha_ = p["init_beta"], p["init_alpha"]
        return val_split(val_features, val_labels, dim, num_classes, keys.dtype)

    def _one_hot_t(self):
        """Sparse (C, K) transpose of the one-hot value matrix V."""
        n = self.key_labels_.shape[0]
        return sp.csr_matrix(
            (np.ones(n, dtype=self.keys_.dtype), (self.key_labels_, np.arange(n))),
            shape=(self.text_weights_.shape[0], n))

    @staticmethod
    def _cache_logits(affinity_t, beta, values_t):
        """exp(-beta (1 - A)) V, from A^T (K, N); returns (N, C)."""
        e = np.exp(beta * (affinity_t - 1.0))
        return np.asarray(values_t @ e).T

    def _search(self, keys, val_x, val_y):
        """Official order: beta outer, alpha inner, first strict best wins."""
        clip_logits = self.logit_scale_ * (val_x @ self.text_weights_.T)
        affinity_m1 = keys @ val_x.T - 1.0               # (K, N), reused per beta
        values_t = self._one_hot_t()
        alphas = search_grid(float(self.alpha_scale), int(self.alpha_steps))
        e, mixed = np.empty_like(affinity_m1), np.empty_like(clip_logits)
        best = (-1.0, self.beta_, self.alpha_)
        for beta in search_grid(float(self.beta_scale), int(self.beta_steps)):
            np.exp(np.multiply(affinity_m1, beta, out=e), out=e)
            cache = np.asarray(values_t @ e).T
            for alpha in alphas:
                np.multiply(cache, alpha, out=mixed)
                mixed += clip_logits
                acc = topk_accuracy(mixed, val_y)
                if acc > best[0]:
                    best = (acc, float(beta), float(alpha))
        return best

    # -- API ---------------------------------------------------------------
    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "TipAdapter":
        """Build the cache from (N, D) normalised shots and their labels.

        Parameters: val_features / val_labels: the split beta and alpha are
        searched on (without it init_beta / init_alpha are kept).
        Returns: self.
        """
        val_x, val_y = self._check_inputs(features, labels, val_features, val_labels)
        if val_x is not None:
            self.val_accuracy_, self.beta_, self.alpha_ = self._search(self.keys_, val_x, val_y)
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = logit_scale f.W_t^T + alpha exp(-beta (1 - f.K^T)) V."""
        self._check_fitted()
        return self._logits_with(self.keys_, as_features(features, dim=self.keys_.shape[1],
                                                         dtype=self.keys_.dtype), self.beta_, self.alpha_)

    def _logits_with(self, keys, x, beta, alpha):
        clip_logits = self.logit_scale_ * (x @ self.text_weights_.T)
        return clip_logits + alpha * self._cache_logits(keys @ x.T, beta, self._one_hot_t())


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are trained with cross-entropy.

    Parameters: epochs, lr, eps, weight_decay, betas: AdamW (torch defaults
    betas (0.9, 0.999), weight decay 0.01) with the official lr 1e-3, eps 1e-4
    and a per-step cosine schedule over all epochs; batch_size; seed (batch
    order); every TipAdapter hyper-parameter.
    fit(features, labels, val_features, val_labels, train_features=None,
    train_labels=None): train_features are the shots as (N, D) or augmented
    views (E, N, D), one view per epoch in turn (the official code re-augments
    every epoch); default: the cache keys themselves.  Keys start from the
    cache keys; the epoch doing best on the validation split is kept.
    """

    def __init__(self, text_weights: Optional[np.ndarray] = None, epochs: int = 20, lr: float = 1e-3,
                 eps: float = 1e-4, weight_decay: float = 0.01, betas: Tuple[float, float] = (0.9, 0.999),
                 batch_size: int = 256, seed: int = 0, beta_scale: float = 7.0, beta_steps: int = 200,
                 alpha_scale: float = 3.0, alpha_steps: int = 20, init_beta: float = 1.0,
                 init_alpha: float = 1.17, logit_scale: float = 100.0):
        self._keep_params(locals())     # Tip-Adapter's parameters and AdamW's

    def check_params(self):
        """Tip-Adapter's checks plus AdamW's settings (see ``Head.check_params``)."""
        p = super().check_params()
        p["epochs"] = check_number("epochs", p["epochs"], 0, integer=True)
        p["lr"] = check_number("lr", p["lr"], 0.0)
        p["eps"] = check_number("eps", p["eps"], 0.0, strictly=True)
        p["weight_decay"] = check_number("weight_decay", p["weight_decay"], 0.0)
        p["batch_size"] = check_number("batch_size", p["batch_size"], 1, integer=True)
        if not isinstance(p["betas"], (list, tuple, np.ndarray)) or len(p["betas"]) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        p["betas"] = tuple(check_number("betas", b, 0.0) for b in p["betas"])
        return p

    def _train_views(self, train_features, train_labels):
        if train_features is None:
            if train_labels is not None:
                raise ValueError("train_labels given without train_features")
            return self.keys_[None], self.key_labels_
        views = np.asarray(train_features)
        if views.ndim == 2:
            views = views[None]
        if views.ndim != 3:
            raise ValueError(f"train_features must be (N, D) or (E, N, D), got {views.shape}")
        views = np.stack([as_features(v, "train_features", dim=self.keys_.shape[1],
                                      dtype=self.keys_.dtype) for v in views])
        labels = self.key_labels_ if train_labels is None else train_labels
        labels = as_labels(labels, views.shape[1], self.text_weights_.shape[0],
                           "train_labels", every_class=False)
        return views, labels

    def _loss_grad_keys(self, keys, x, y, values_t, beta, alpha):
        """Gradient of mean cross-entropy w.r.t. the keys (analytic)."""
        affinity_t = keys @ x.T                                    # (K, B)
        e_t = np.exp(beta * (affinity_t - 1.0))                    # (K, B)
        logits = self.logit_scale_ * (x @ self.text_weights_.T) + \
            alpha * np.asarray(values_t @ e_t).T
        g = softmax(logits)
        g[np.arange(len(y)), y] -= 1.0
        g /= len(y)                                                 # dL/dlogits
        # dL/dA^T = beta * E^T * (alpha * V g^T); V g^T gathers g by key label
        d_aff_t = (alpha * beta) * e_t * g.T[self.key_labels_]
        return d_aff_t @ x                                          # (K, D)

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None, val_labels: Optional[np.ndarray] = None,
            train_features: Optional[np.ndarray] = None,
            train_labels: Optional[np.ndarray] = None) -> "TipAdapterF":
        """Build the cache from the shots, then train its keys.

        Parameters: as TipAdapter.fit, plus train_features / train_labels
        (see the class docstring).
        Returns: self.
        """
        p = self.check_params()
        epochs, lr, eps, weight_decay, batch_size = (
            p[k] for k in ("epochs", "lr", "eps", "weight_decay", "batch_size"))
        b1, b2 = p["betas"]
        val_x, val_y = self._check_inputs(features, labels, val_features, val_labels)
        beta, alpha = self.beta_, self.alpha_           # training uses the initial pair
        views, labels = self._train_views(train_features, train_labels)

        rng = np.random.default_rng(self.seed)
        values_t = self._one_hot_t()
        keys = self.keys_.copy()
        m, v = np.zeros_like(keys), np.zeros_like(keys)
        n = views.shape[1]
        per_epoch = -(-n // batch_size)
        total = epochs * per_epoch
        best_acc, best_keys, step = -1.0, keys.copy(), 0
        for epoch in range(epochs):
            x_all = views[epoch % len(views)]
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                grad = self._loss_grad_keys(keys, x_all[idx], labels[idx], values_t, beta, alpha)
                rate = lr * 0.5 * (1.0 + np.cos(np.pi * step / total))
                step += 1
                # AdamW as torch.optim.AdamW: decoupled decay, bias-corrected
                keys *= 1.0 - rate * weight_decay
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad * grad
                denom = np.sqrt(v) / np.sqrt(1 - b2 ** step) + eps
                keys -= (rate / (1 - b1 ** step)) * m / denom
            if val_x is not None:
                acc = topk_accuracy(self._logits_with(keys, val_x, beta, alpha), val_y)
                if acc > best_acc:          # strict: the earliest best epoch
                    best_acc, best_keys = acc, keys.copy()
            else:
                best_keys = keys
        self.keys_ = np.ascontiguousarray(best_keys)
        if val_x is not None:
            self.val_accuracy_, self.beta_, self.alpha_ = self._search(self.keys_, val_x, val_y)
        return self
