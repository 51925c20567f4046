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
from typing import Callable, Optional, Sequence

import numpy as np

from ..progress import progress as progress_bar
from .base import Head, as_features, check_number, softmax
from ..file_schema import Array, Float, Int
from .head_file import ArrayDict


def sinkhorn(logits: np.ndarray, tau_t: float = 0.01, gamma: float = 0.0, iters: int = 20,
             class_prior: Optional[Sequence[float]] = None) -> np.ndarray:
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


def harden(plabel: np.ndarray, alpha: float) -> np.ndarray:
    """Rows whose max exceeds alpha become one-hot (a copy)."""
    plabel = plabel.copy()
    idx = plabel.argmax(axis=1)
    sure = plabel[np.arange(len(idx)), idx] > alpha
    plabel[sure] = 0
    plabel[sure, idx[sure]] = 1
    return plabel


def proxy_step(x: np.ndarray, proxies: np.ndarray, target_stat: np.ndarray, lr: float, tau_i: float,
               prev_grad_norm: float):
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


def learn_proxies(x: np.ndarray, text_weights: np.ndarray, plabel: np.ndarray, lr: float = 10.0,
                  iters: int = 2000, tau_i: float = 0.04, alpha: float = 0.6,
                  callback: Optional[Callable] = None, progress: bool = False) -> np.ndarray:
    """Vision proxies (C, D) from pseudo labels, starting at the text proxies.

    ``callback(step, proxies)``, when given, sees the proxies after every step
    (1..iters), e.g. to keep snapshots for a sweep over ``iters``;
    ``progress`` shows a progress bar (a full run takes minutes on a CPU).

    Stops early, with the same result, once a step leaves the proxies
    unchanged (bit for bit): the next step then sees the same proxies, the
    same gradient norm (so the same lr) and makes the same no-op update, for
    ever.  The halved lr gets there long before the official 2,000 steps.
    ``callback`` still sees every step up to ``iters``.
    """
    target_stat = harden(plabel, alpha).T.astype(x.dtype) @ x
    proxies = text_weights.copy()
    grad_norm = np.inf
    for i in progress_bar(range(iters), desc="InMaP", unit="step", enabled=progress, leave=False):
        new, lr, grad_norm = proxy_step(x, proxies, target_stat, lr, tau_i, grad_norm)
        fixed = np.array_equal(new, proxies)
        proxies = new
        if callback is not None:
            callback(i + 1, proxies)
        if fixed:
            for step in range(i + 2, iters + 1) if callback is not None else ():
                callback(step, proxies)
            break
    return proxies


class InMaP(Head):
    """InMaP head: logits = X proxies^T / tau_i, proxies learned on the
    unlabelled features they will label (transductive).

    Parameters: text_weights (C, D) unit class embeddings (the start
    proxies and the pseudo-label source); lr, iters, iters_sinkhorn, tau_t,
    tau_i, alpha, gamma: the official hyper-parameters; class_prior: (C,)
    column mass for Sinkhorn (None: uniform, or gamma's rule);
    use_sinkhorn=False learns from the plain text softmax labels instead
    (the official script's intermediate result); snapshots: step counts
    <= iters whose proxies are kept, so one fit serves a sweep over
    ``iters`` (``logits(x, at_iter=n)``); progress: show a progress bar.
    Fitted: proxies_ (C, D), snapshots_ {step: (C, D)}, tau_i_.
    """

    _fitted = ("proxies_", "tau_i_")
    fitted_spec = {"proxies_": Array("f", ("C", "D")), "tau_i_": Float(), "iters_": Int(0, 1 << 62),
                   "snapshots_": ArrayDict(Array("f", ("C", "D")), key=Int(0, 1 << 62))}

    def __init__(self, text_weights: Optional[np.ndarray] = None, lr: float = 10.0, iters: int = 2000,
                 iters_sinkhorn: int = 20, tau_t: float = 0.01, tau_i: float = 0.04, alpha: float = 0.6,
                 gamma: float = 0.0, class_prior: Optional[Sequence[float]] = None,
                 use_sinkhorn: bool = True, snapshots: Sequence[int] = (), progress: bool = False):
        self._keep_params(locals())

    def check_params(self):
        """The optimisation settings, checked (see ``Head.check_params``);
        ``snapshots`` comes back sorted, without repeats."""
        p = super().check_params()
        p["iters"] = iters = check_number("iters", p["iters"], 1, integer=True)
        p["lr"] = check_number("lr", p["lr"], 0.0, strictly=True)
        p["iters_sinkhorn"] = check_number("iters_sinkhorn", p["iters_sinkhorn"], 0, integer=True)
        p["tau_t"] = check_number("tau_t", p["tau_t"], 0.0, strictly=True)
        p["tau_i"] = check_number("tau_i", p["tau_i"], 0.0, strictly=True)
        p["alpha"] = check_number("alpha", p["alpha"])
        p["gamma"] = check_number("gamma", p["gamma"], 0.0)
        keep = sorted({check_number("snapshots", s, 1, integer=True) for s in p["snapshots"]})
        if keep and not keep[-1] <= iters:
            raise ValueError(f"snapshots must lie in 1..{iters}, got {keep}")
        p["snapshots"] = keep
        return p

    def fit(self, features: np.ndarray, labels=None, val_features=None, val_labels=None) -> "InMaP":
        """Learn the proxies on (N, D) normalised features (the ones to label).

        Parameters: labels and the validation split are ignored (InMaP uses
        no labels).
        Returns: self.
        """
        p = self.check_params()
        iters, lr, iters_sinkhorn, tau_t, tau_i, alpha, gamma, keep = (
            p[k] for k in ("iters", "lr", "iters_sinkhorn", "tau_t", "tau_i", "alpha", "gamma", "snapshots"))
        t = self._text_weights()
        x = as_features(features, dim=t.shape[1])
        t = t.astype(x.dtype)
        text_logits = x @ t.T
        if self.use_sinkhorn:
            plabel = sinkhorn(text_logits, tau_t, gamma, iters_sinkhorn, self.class_prior)
        else:
            plabel = softmax(text_logits / tau_t, axis=1)
        self.snapshots_ = {}
        keep = set(keep)

        def snapshot(step, proxies):
            if step in keep:
                self.snapshots_[step] = proxies.copy()
        self.proxies_ = learn_proxies(x, t, plabel, lr, iters, tau_i, alpha,
                                      snapshot if keep else None, bool(self.progress))
        self.tau_i_ = tau_i
        self.iters_ = iters
        return self

    def logits(self, features: np.ndarray, at_iter: Optional[int] = None) -> np.ndarray:
        """(N, C) = features . proxies^T / tau_i.

        Parameters: at_iter: use the proxies after that many steps (one of
        ``snapshots``, or iters); None: after all ``iters``.
        """
        self._check_fitted()
        proxies = self.proxies_
        if at_iter is not None and at_iter != self.iters_:
            if at_iter not in self.snapshots_:
                raise ValueError(f"no proxies kept at step {at_iter}: snapshots are "
                                 f"{sorted(self.snapshots_)} (and {self.iters_}); fit with "
                                 f"snapshots=(..., {at_iter})")
            proxies = self.snapshots_[at_iter]
        x = as_features(features, dim=proxies.shape[1], dtype=proxies.dtype)
        return (x @ proxies.T) / self.tau_i_
