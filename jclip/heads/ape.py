"""APE, training-free (Zhu et al., ICCV'23, "Not All Features Matter";
yangyangyang127/APE): a Tip-Adapter cache on refined feature channels.

Channel criterion (per channel d), over each class's text weight and shots:
  sim_d = mean over pairs of samples (m, n) from different classes i != j of f_im,d f_jn,d
  var_d = variance of the text weights over classes (unbiased)
  J_d   = -w0 sim_d + w1 var_d,   w = (0.7, 0.3)
The ``feat_num`` channels with the largest J are kept; keys, text weights
and test features restricted to them are renormalised (primes below).

  R_fW = 100 x t^T                         (all channels)
  R_fF = x' K'^T
  KL_k = sum_c V_kc log2((V_kc + 1e-6) / (softmax(K' t'^T)_kc + 1e-6))
  logits = R_fW + alpha exp(-beta (1 - R_fF)) (V * exp(gamma KL))

beta, alpha, gamma: the first best on the validation split of the grid
beta in [0.1, 7) x 200, alpha in [0.1, 7) x 20, gamma in [0, 0.5) x 5
(beta outer, then alpha, then gamma; the official ImageNet config); without
validation, the config's starting values beta 1, alpha 2, gamma 0.1.
feat_num: the official 500 of RN50's 1,024 channels, scaled to the width
(None: D x 500 / 1024, 250 for 512-d features).
"""
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ..metrics import topk_accuracy
from .base import Head, as_features, check_number, l2_normalize, softmax
from ..file_schema import Array, Float, Maybe
from .tip_adapter import search_grid

KL_EPS = 1e-6       # the official log2((V + 1e-6) / (p + 1e-6))


def ape_channels(text: np.ndarray, keys: np.ndarray, labels: np.ndarray, feat_num: int,
                 w: Sequence[float]) -> np.ndarray:
    """The ``feat_num`` channel ids with the largest criterion J, best first."""
    num_classes = text.shape[0]
    sums = text.astype(np.float64).copy()             # per class: text + its shots
    np.add.at(sums, labels, keys.astype(np.float64))
    counts = 1.0 + np.bincount(labels, minlength=num_classes)
    total = sums.sum(axis=0)
    # sum over i != j of s_i * s_j = total^2 - sum_i s_i^2, per channel
    cross = total * total - (sums * sums).sum(axis=0)
    pairs = counts.sum() ** 2 - (counts * counts).sum()
    sim = cross / pairs
    criterion = -w[0] * sim + w[1] * text.astype(np.float64).var(axis=0, ddof=1)
    order = np.lexsort((np.arange(len(criterion)), -criterion))
    return order[:feat_num]


class APE(Head):
    """Training-free APE head.

    Parameters: text_weights (C, D); feat_num (None: D x 500 / 1024); w:
    the criterion weights; init_beta / init_alpha / init_gamma: used
    without a validation split; search_scale / search_step: the (beta,
    alpha, gamma) grids; logit_scale: 100.
    fit(features, labels, val_features=None, val_labels=None): the shots
    are the cache keys (every class needs one).
    Fitted: channels_, keys_ (refined, renormalised), key_labels_,
    text_weights_, key_divergence_ (KL_k), beta_, alpha_, gamma_,
    logit_scale_; val_accuracy_ with a validation split.
    """

    _fitted = ("channels_", "keys_", "key_labels_", "text_weights_", "key_divergence_",
               "beta_", "alpha_", "gamma_", "logit_scale_")
    fitted_spec = {"channels_": Array("i", ("K",)), "keys_": Array("f", ("N", "K")),
                   "key_labels_": Array("i", ("N",)), "text_weights_": Array("f", ("C", "D")),
                   "key_divergence_": Array("f", ("N",)), "logit_scale_": Float(), "beta_": Float(),
                   "alpha_": Float(), "gamma_": Float(), "val_accuracy_": Maybe(Float(0, 1))}

    def __init__(self, text_weights: Optional[np.ndarray] = None, feat_num: Optional[int] = None,
                 w: Sequence[float] = (0.7, 0.3), init_beta: float = 1.0, init_alpha: float = 2.0,
                 init_gamma: float = 0.1, search_scale: Sequence[float] = (7.0, 7.0, 0.5),
                 search_step: Sequence[int] = (200, 20, 5), logit_scale: float = 100.0):
        self._keep_params(locals())

    def check_params(self):
        """The hyper-parameters checked."""
        out = super().check_params()
        for name, integer in (("w", False), ("search_scale", False), ("search_step", True)):
            v = out[name]
            n = 2 if name == "w" else 3
            if np.isscalar(v) or len(tuple(v)) != n:
                raise ValueError(f"{name} must be {n} numbers, got {v!r}")
            out[name] = tuple(check_number(name, e, 1 if integer else None, integer=integer) for e in v)
        if out["feat_num"] is not None:
            check_number("feat_num", out["feat_num"], 1, integer=True)
        for name in ("init_beta", "init_alpha", "init_gamma", "logit_scale"):
            check_number(name, out[name])
        return out

    def fit(self, features: np.ndarray, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "APE":
        """Refine the channels, build the cache, search (beta, alpha, gamma) on validation."""
        p, t, keys, y, vx, vy = self._labelled_shots(features, labels, val_features, val_labels)
        num_classes, dim = t.shape
        feat_num = dim * 500 // 1024 if p["feat_num"] is None else int(p["feat_num"])
        if feat_num > dim:
            raise ValueError(f"feat_num {feat_num} exceeds the feature width {dim}")
        t = t.astype(keys.dtype)
        self.channels_ = ape_channels(t, keys, y, feat_num, p["w"])
        self.keys_ = l2_normalize(keys[:, self.channels_])
        self.key_labels_ = y
        self.text_weights_ = t
        self.logit_scale_ = float(p["logit_scale"])
        refined_text = l2_normalize(t[:, self.channels_])
        key_probs = softmax(self.keys_ @ refined_text.T)
        own = key_probs[np.arange(len(y)), y]
        # V is one-hot: only the own class contributes (0 * log(...) = 0 elsewhere)
        self.key_divergence_ = np.log2((1.0 + KL_EPS) / (own + KL_EPS)).astype(keys.dtype)
        self.beta_, self.alpha_, self.gamma_ = (float(p["init_beta"]), float(p["init_alpha"]),
                                                float(p["init_gamma"]))
        self.val_accuracy_ = None
        if vx is not None:
            self._search(vx, vy, p)
        return self

    def _values_t(self, gamma: float):
        """(C, K) sparse transpose of V * exp(gamma KL)."""
        n = len(self.key_labels_)
        return sp.csr_matrix((np.exp(gamma * self.key_divergence_),
                              (self.key_labels_, np.arange(n))),
                             shape=(self.text_weights_.shape[0], n))

    def _search(self, vx, vy, p):
        """Official order: beta, alpha, gamma nested; the first strict best wins."""
        scale, step = p["search_scale"], p["search_step"]
        betas = search_grid(scale[0], step[0])
        alphas = search_grid(scale[1], step[1])
        gammas = [i * scale[2] / step[2] for i in range(step[2])]
        clip_logits = self.logit_scale_ * (vx @ self.text_weights_.T)
        affinity_m1 = self.keys_ @ l2_normalize(vx[:, self.channels_]).T - 1.0   # (K, N)
        values = [self._values_t(g) for g in gammas]
        best = (0.0, 0.0, 0.0, 0.0)
        e = np.empty_like(affinity_m1)
        mixed = np.empty_like(clip_logits)
        for beta in betas:
            np.exp(np.multiply(affinity_m1, beta, out=e), out=e)
            caches = [np.asarray(v @ e).T for v in values]
            for alpha in alphas:
                for gamma, cache in zip(gammas, caches):
                    np.multiply(cache, alpha, out=mixed)
                    mixed += clip_logits
                    acc = topk_accuracy(mixed, vy)
                    if acc > best[0]:
                        best = (acc, float(beta), float(alpha), float(gamma))
        self.val_accuracy_, self.beta_, self.alpha_, self.gamma_ = best

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = 100 x t^T + alpha exp(-beta (1 - x' K'^T)) (V * exp(gamma KL))."""
        self._check_fitted()
        x = as_features(features, dim=self.text_weights_.shape[1], dtype=self.keys_.dtype)
        refined = l2_normalize(x[:, self.channels_])
        e = np.exp(self.beta_ * (self.keys_ @ refined.T - 1.0))
        cache = np.asarray(self._values_t(self.gamma_) @ e).T
        return self.logit_scale_ * (x @ self.text_weights_.T) + self.alpha_ * cache
