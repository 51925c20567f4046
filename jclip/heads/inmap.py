"""InMaP (Qian et al., NeurIPS'23; idstcv/InMaP): transductive vision proxies.

Label-free: fit on the unlabelled test features X and text proxies W_t.
1. Pseudo labels: Sinkhorn on softmax(X W_t / tau_t) (columns to the class
   prior, rows to 1/N); rows whose max > alpha become one-hot.
2. Proxy learning from W_t, ``iters`` full-batch steps:
   P = softmax(X W / tau_i); G = X^T P - X^T Q; halve lr when |G| grows;
   W <- normalise_columns(W - lr / (N tau_i) G).
Official defaults: lr 10, iters 2000, sinkhorn 20, tau_t 0.01, tau_i 0.04,
alpha 0.6, gamma 0.  Class weights here are rows (C, D); the official code
keeps them as columns (D, C) - the same arithmetic.
"""
import numpy as np
from tqdm import trange

from .base import Head, as_features, softmax


def sinkhorn(logits, tau_t=0.01, gamma=0.0, iters=20, class_prior=None):
    """Balanced soft labels (N, C), each row summing to 1.

    Column mass goes to ``class_prior`` (C,) when given, else to
    (column sums of the first softmax)^gamma normalised when gamma > 0, else
    to the uniform 1/C (the official rule).
    """
    n, c = logits.shape
    p = softmax(logits / tau_t, axis=1) / n
    if class_prior is not None:
        q = np.asarray(class_prior, dtype=p.dtype)
        if q.shape != (c,) or not np.isfinite(q).all() or (q < 0).any() or q.sum() <= 0:
            raise ValueError(f"class_prior must be {c} non-negative finite weights")
        q = q / q.sum()
    elif gamma > 0:
        q = p.sum(axis=0) ** gamma
        q /= q.sum()
    else:
        q = np.full(c, 1.0 / c, dtype=p.dtype)
    for _ in range(iters):
        p /= p.sum(axis=0, keepdims=True)
        p *= q
        p /= p.sum(axis=1, keepdims=True)
        p /= n
    return p * n


def harden(plabel, alpha):
    """Rows whose max exceeds alpha become one-hot (a copy)."""
    plabel = plabel.copy()
    idx = plabel.argmax(axis=1)
    sure = plabel[np.arange(len(idx)), idx] > alpha
    plabel[sure] = 0
    plabel[sure, idx[sure]] = 1
    return plabel


def proxy_step(x, proxies, target_stat, lr, tau_i, prev_grad_norm):
    """One proxy-learning step; returns (proxies, lr, grad_norm).

    x (N, D); proxies (C, D) unit rows; target_stat = Q^T X (C, D).
    """
    prob = softmax(x @ proxies.T / tau_i, axis=1)
    grad = prob.T @ x - target_stat
    grad_norm = float(np.sqrt(np.einsum("ij,ij->", grad, grad, dtype=np.float64)))
    if grad_norm > prev_grad_norm:
        lr = lr / 2.0
    proxies = proxies - (lr / (x.shape[0] * tau_i)) * grad
    proxies /= np.maximum(np.linalg.norm(proxies, axis=1, keepdims=True), 1e-12)
    return proxies, lr, grad_norm


def learn_proxies(x, text_weights, plabel, lr=10.0, iters=2000, tau_i=0.04, alpha=0.6,
                  callback=None, progress=False):
    """Vision proxies (C, D) from pseudo labels, starting at the text proxies.

    ``callback(step, proxies)``, when given, sees the proxies after every step
    (1..iters), e.g. to keep snapshots for a sweep over ``iters``;
    ``progress`` shows a progress bar (a full run takes minutes on a CPU).
    """
    target_stat = harden(plabel, alpha).T.astype(x.dtype) @ x
    proxies = text_weights.copy()
    grad_norm = np.inf
    for i in trange(iters, desc="InMaP", unit="step", disable=not progress, leave=False):
        proxies, lr, grad_norm = proxy_step(x, proxies, target_stat, lr, tau_i, grad_norm)
        if callback is not None:
            callback(i + 1, proxies)
    return proxies


class InMaP(Head):
    """fit(test_features, text_weights); logits = X proxies^T / tau_i.

    use_sinkhorn=False learns from the plain text softmax labels instead
    (the official script's intermediate result).
    """

    _state_keys = ("proxies", "tau_i")

    def __init__(self, lr=10.0, iters=2000, iters_sinkhorn=20, tau_t=0.01,
                 tau_i=0.04, alpha=0.6, gamma=0.0, class_prior=None,
                 use_sinkhorn=True):
        self.lr, self.iters, self.iters_sinkhorn = float(lr), int(iters), int(iters_sinkhorn)
        self.tau_t, self.tau_i, self.alpha = float(tau_t), float(tau_i), float(alpha)
        self.gamma, self.use_sinkhorn = float(gamma), bool(use_sinkhorn)
        self.class_prior = class_prior
        self.proxies = None

    def fit(self, features, text_weights, snapshots=(), progress=False):
        """Learn the proxies.  ``snapshots``: step counts <= iters whose proxies
        are kept in ``snapshots_`` {step: (C, D)} (one run serves many ``iters``);
        ``progress``: show a progress bar."""
        keep = sorted({int(s) for s in snapshots})
        if keep and not 1 <= keep[0] <= keep[-1] <= self.iters:
            raise ValueError(f"snapshots must lie in 1..{self.iters}, got {keep}")
        self.snapshots_ = {}
        t = as_features(text_weights, "text_weights")
        x = as_features(features, dim=t.shape[1])
        t = t.astype(x.dtype)
        text_logits = x @ t.T
        if self.use_sinkhorn:
            plabel = sinkhorn(text_logits, self.tau_t, self.gamma,
                              self.iters_sinkhorn, self.class_prior)
        else:
            plabel = softmax(text_logits / self.tau_t, axis=1)
        keep = set(keep)

        def snapshot(step, proxies):
            if step in keep:
                self.snapshots_[step] = proxies.copy()
        self.proxies = learn_proxies(x, t, plabel, self.lr, self.iters, self.tau_i,
                                     self.alpha, snapshot if keep else None, progress)
        return self

    def logits(self, features):
        self._check_fitted()
        x = as_features(features, dim=self.proxies.shape[1], dtype=self.proxies.dtype)
        return (x @ self.proxies.T) / self.tau_i
