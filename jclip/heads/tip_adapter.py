"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV'22; gaopengcuhk/Tip-Adapter).

logits = logit_scale * f . W_t^T + alpha * exp(-beta (1 - f . K^T)) V

K: cache keys (few-shot features; averaging augmented passes is the feature
extractor's job), V: one-hot cache labels.  beta and alpha are searched on a
validation split over the official grids ``i * (scale - 0.1) / steps + 0.1``
(ImageNet defaults: beta scale 7 x 200 steps, alpha scale 3 x 20 steps).
Tip-Adapter-F also trains the keys (AdamW, cosine schedule), keeping the epoch
that does best on the validation split (the official code picks it on test).
"""
import numpy as np
import scipy.sparse as sp

from .base import Head, as_features, as_labels, softmax


def search_grid(scale, steps):
    """The official Tip-Adapter grid: [0.1, scale) in ``steps`` even steps."""
    return np.array([i * (scale - 0.1) / steps + 0.1 for i in range(steps)])


class TipAdapter(Head):
    """Training-free Tip-Adapter with beta/alpha chosen on a validation split.

    fit(cache_keys, cache_labels, text_weights, val_features=None, val_labels=None)
    Without a validation split, init_beta / init_alpha are used as given.
    """

    _state_keys = ("keys", "key_labels", "text_weights", "beta", "alpha")

    def __init__(self, beta_scale=7.0, beta_steps=200, alpha_scale=3.0,
                 alpha_steps=20, init_beta=1.0, init_alpha=1.17,
                 logit_scale=100.0):
        self.beta_scale, self.beta_steps = float(beta_scale), int(beta_steps)
        self.alpha_scale, self.alpha_steps = float(alpha_scale), int(alpha_steps)
        self.init_beta, self.init_alpha = float(init_beta), float(init_alpha)
        self.logit_scale = float(logit_scale)
        self.keys = self.key_labels = self.text_weights = None
        self.beta = self.alpha = None

    # -- shared pieces -----------------------------------------------------
    def _check_inputs(self, cache_keys, cache_labels, text_weights):
        text_weights = as_features(text_weights, "text_weights")
        num_classes, dim = text_weights.shape
        keys = as_features(cache_keys, "cache_keys", dim=dim)
        labels = as_labels(cache_labels, keys.shape[0], num_classes, "cache_labels")
        return keys, labels, text_weights.astype(keys.dtype)

    def _one_hot_t(self):
        """Sparse (C, K) transpose of the one-hot value matrix V."""
        n = self.key_labels.shape[0]
        return sp.csr_matrix(
            (np.ones(n, dtype=self.keys.dtype), (self.key_labels, np.arange(n))),
            shape=(self.text_weights.shape[0], n))

    @staticmethod
    def _cache_logits(affinity_t, beta, values_t):
        """exp(-beta (1 - A)) V, from A^T (K, N); returns (N, C)."""
        e = np.exp(beta * (affinity_t - 1.0))
        return np.asarray(values_t @ e).T

    def _search(self, keys, val_x, val_y):
        """Official order: beta outer, alpha inner, first strict best wins."""
        clip_logits = self.logit_scale * (val_x @ self.text_weights.T)
        affinity_m1 = keys @ val_x.T - 1.0               # (K, N), reused per beta
        values_t = self._one_hot_t()
        alphas = search_grid(self.alpha_scale, self.alpha_steps)
        e, mixed = np.empty_like(affinity_m1), np.empty_like(clip_logits)
        best = (-1.0, self.init_beta, self.init_alpha)
        for beta in search_grid(self.beta_scale, self.beta_steps):
            np.exp(np.multiply(affinity_m1, beta, out=e), out=e)
            cache = np.asarray(values_t @ e).T
            for alpha in alphas:
                np.multiply(cache, alpha, out=mixed)
                mixed += clip_logits
                acc = float((mixed.argmax(1) == val_y).mean())
                if acc > best[0]:
                    best = (acc, float(beta), float(alpha))
        return best

    def _val_split(self, val_features, val_labels):
        if val_features is None and val_labels is None:
            return None, None
        if val_features is None or val_labels is None:
            raise ValueError("give both val_features and val_labels, or neither")
        x = as_features(val_features, "val_features", dim=self.keys.shape[1],
                        dtype=self.keys.dtype)
        y = as_labels(val_labels, x.shape[0], self.text_weights.shape[0],
                      "val_labels", every_class=False)
        return x, y

    # -- API ---------------------------------------------------------------
    def fit(self, cache_keys, cache_labels, text_weights, val_features=None,
            val_labels=None):
        self.keys, self.key_labels, self.text_weights = \
            self._check_inputs(cache_keys, cache_labels, text_weights)
        self.beta, self.alpha = self.init_beta, self.init_alpha
        val_x, val_y = self._val_split(val_features, val_labels)
        if val_x is not None:
            self.val_accuracy_, self.beta, self.alpha = \
                self._search(self.keys, val_x, val_y)
        return self

    def logits(self, features):
        self._check_fitted()
        x = as_features(features, dim=self.keys.shape[1], dtype=self.keys.dtype)
        clip_logits = self.logit_scale * (x @ self.text_weights.T)
        cache = self._cache_logits(self.keys @ x.T, self.beta, self._one_hot_t())
        return clip_logits + self.alpha * cache


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are trained with cross-entropy.

    fit(cache_keys, cache_labels, text_weights, val_features, val_labels,
        train_features=None, train_labels=None)
    train_features: the shots as (N, D) or augmented views (E, N, D), one
    view per epoch in turn (the official code re-augments every epoch);
    default: the cache keys themselves.  Keys start from cache_keys; AdamW
    (torch defaults betas (0.9, 0.999), weight decay 0.01) with the official
    lr 1e-3, eps 1e-4 and a per-step cosine schedule over all epochs.
    """

    def __init__(self, epochs=20, lr=1e-3, eps=1e-4, weight_decay=0.01,
                 betas=(0.9, 0.999), batch_size=256, seed=0, **search_args):
        super().__init__(**search_args)
        self.epochs, self.lr, self.eps = int(epochs), float(lr), float(eps)
        self.weight_decay, self.betas = float(weight_decay), tuple(betas)
        self.batch_size, self.seed = int(batch_size), seed

    def _train_views(self, train_features, train_labels):
        if train_features is None:
            if train_labels is not None:
                raise ValueError("train_labels given without train_features")
            return self.keys[None], self.key_labels
        views = np.asarray(train_features)
        if views.ndim == 2:
            views = views[None]
        if views.ndim != 3:
            raise ValueError(f"train_features must be (N, D) or (E, N, D), got {views.shape}")
        views = np.stack([as_features(v, "train_features", dim=self.keys.shape[1],
                                      dtype=self.keys.dtype) for v in views])
        labels = self.key_labels if train_labels is None else train_labels
        labels = as_labels(labels, views.shape[1], self.text_weights.shape[0],
                           "train_labels", every_class=False)
        return views, labels

    def _loss_grad_keys(self, keys, x, y, values_t):
        """Gradient of mean cross-entropy w.r.t. the keys (analytic)."""
        affinity_t = keys @ x.T                                    # (K, B)
        e_t = np.exp(self.init_beta * (affinity_t - 1.0))          # (K, B)
        logits = self.logit_scale * (x @ self.text_weights.T) + \
            self.init_alpha * np.asarray(values_t @ e_t).T
        g = softmax(logits)
        g[np.arange(len(y)), y] -= 1.0
        g /= len(y)                                                 # dL/dlogits
        # dL/dA^T = beta * E^T * (alpha * V g^T); V g^T gathers g by key label
        d_aff_t = (self.init_alpha * self.init_beta) * e_t * g.T[self.key_labels]
        return d_aff_t @ x                                          # (K, D)

    def fit(self, cache_keys, cache_labels, text_weights, val_features=None,
            val_labels=None, train_features=None, train_labels=None):
        self.keys, self.key_labels, self.text_weights = \
            self._check_inputs(cache_keys, cache_labels, text_weights)
        self.beta, self.alpha = self.init_beta, self.init_alpha
        val_x, val_y = self._val_split(val_features, val_labels)
        views, labels = self._train_views(train_features, train_labels)

        rng = np.random.default_rng(self.seed)
        values_t = self._one_hot_t()
        keys = self.keys.copy()
        m, v = np.zeros_like(keys), np.zeros_like(keys)
        b1, b2 = self.betas
        n = views.shape[1]
        per_epoch = -(-n // self.batch_size)
        total = self.epochs * per_epoch
        best_acc, best_keys, step = -1.0, keys.copy(), 0
        for epoch in range(self.epochs):
            x_all = views[epoch % len(views)]
            order = rng.permutation(n)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                grad = self._loss_grad_keys(keys, x_all[idx], labels[idx], values_t)
                lr = self.lr * 0.5 * (1.0 + np.cos(np.pi * step / total))
                step += 1
                # AdamW as torch.optim.AdamW: decoupled decay, bias-corrected
                keys *= 1.0 - lr * self.weight_decay
                m = b1 * m + (1 - b1) * grad
                v = b2 * v + (1 - b2) * grad * grad
                denom = np.sqrt(v) / np.sqrt(1 - b2 ** step) + self.eps
                keys -= (lr / (1 - b1 ** step)) * m / denom
            if val_x is not None:
                acc = float((self._logits_with(keys, val_x, self.init_beta,
                                               self.init_alpha).argmax(1) == val_y).mean())
                if acc > best_acc:          # strict: the earliest best epoch
                    best_acc, best_keys = acc, keys.copy()
            else:
                best_keys = keys
        self.keys = np.ascontiguousarray(best_keys)
        if val_x is not None:
            self.val_accuracy_, self.beta, self.alpha = \
                self._search(self.keys, val_x, val_y)
        return self

    def _logits_with(self, keys, x, beta, alpha):
        clip_logits = self.logit_scale * (x @ self.text_weights.T)
        return clip_logits + alpha * self._cache_logits(keys @ x.T, beta, self._one_hot_t())
