"""TransCLIP (Zanella et al., NeurIPS'24; MaxZanella/transduction-for-vlms).

Transductive over the whole query set X (N, D): soft assignments z (N, C)
of a Gaussian mixture with one shared diagonal variance, a kNN-graph
smoothing term and a KL pull towards the start predictions y_hat.

Start: y_hat = softmax(100 X P^T) with P the text weights or a start head's
prototypes (InMaP's proxies), or y_hat = a start head's probabilities
(LP++); z = y_hat.  Means mu (C, D): zero-shot, the normalised sum
z_ic x_i over each class's 8 most confident queries; few-shot, the
normalised sum of each class's shots.  Variance: 1/D in every dimension.
Graph W: each query's 3 most similar queries (the most similar, itself,
dropped), cosine weights; few-shot adds the shots as rows [shots; queries]
linked to their queries 2..4.

Per gamma (zero-shot: 0 only; few-shot: 0.002, 0.01, 0.02, 0.2 in turn,
each warm-started from the last), 10 outer iterations of
  5 x  z <- normalise_rows(y_hat^lambda exp(L / 50 + (W^T Z + W z) / (2k)))
       with L_ic = -1/2 sum_d (x_id - mu_cd)^2 / var_d and Z = z with the
       shots' one-hot labels appended,
  mu_c <- normalise((1/N) sum_i z_ic x_i + (50 gamma / |S|) sum_{s in c} s),
  var  <- weighted mean squared distance to the means (queries 1/N, shots 50 gamma/|S|),
and a final z update.  lambda = 1 zero-shot, 0.5 few-shot.

As the official code (its results are the published ones):
- few-shot, Z stacks [queries; shots] while W's rows are [shots; queries]
  (``official_support_order=True``; False aligns them as the paper reads);
- zero-shot started from probabilities, y_hat follows z (the official
  tensors are one object);
- gamma: the one whose final z labels the validation shots best (each
  validation feature takes the z of its nearest query; first best kept).
  Without validation shots: the z after the whole chain (gamma 0.2), the
  official solver's return value.
"""
import hashlib
from typing import NamedTuple, Optional, Sequence

import numpy as np

from .base import Head, as_features, as_labels, check_number, softmax, val_split
from ..file_schema import Array
from .head_file import MaybeArray
from .knn_graph import knn_matrix, top_neighbours
from .start import check_start, start_probabilities

LOGIT_SCALE = 100.0          # the start logits 100 x . p
Z_TEMPERATURE = 50.0         # z update: exp(L / 50 + graph term)
SHOT_WEIGHT = 50.0           # shots weigh 50 gamma / |S| in the mean and variance
N_CONFIDENT = 8              # zero-shot means: the 8 most confident queries per class


class Transduction(NamedTuple):
    """One TransCLIP run: probs (N, C) assignments, gamma used, its validation accuracy (or None)."""
    probs: np.ndarray
    gamma: float
    val_accuracy: Optional[float]


def _log_likelihood(x, x_sq, mu, var):
    """L (N, C) = -1/2 sum_d (x_id - mu_cd)^2 / var_d, without an (N, C, D) array."""
    inv = 1.0 / var
    return -0.5 * ((x_sq @ inv)[:, None] - 2.0 * (x @ (mu * inv).T) + ((mu * mu) @ inv)[None, :])


def _normalise(m):
    return m / np.linalg.norm(m, axis=1, keepdims=True)


class TransCLIP(Head):
    """TransCLIP-ZS (``fit()``) and TransCLIP-FS (``fit(shots, labels, val_x, val_y)``).

    The transduction runs over the features given to ``logits`` /
    ``predict_proba`` (the whole test set at once); ``fit`` checks and keeps
    the text weights, the shots and the validation shots.

    Parameters: text_weights (C, D); init: a fitted start head (InMaP,
    ZeroShot: its prototypes; any other, e.g. LPPlusPlus: its
    probabilities); gammas: the few-shot chain; lambda_zs / lambda_fs: the
    KL weight; outer_iters, inner_iters, n_neighbors: 10, 5, 3;
    official_support_order: see the module docstring.
    Fitted: text_weights_, start_prototypes_ (or None), support_,
    support_labels_, val_features_, val_labels_ (None when not given).
    """

    _fitted = ("text_weights_",)
    fitted_spec = {"text_weights_": Array("f", ("C", "D")),
                   "start_prototypes_": MaybeArray(Array("f", ("C", "D"))),
                   "support_": MaybeArray(Array("f", ("S", "D"))),
                   "support_labels_": MaybeArray(Array("i", ("S",))),
                   "val_features_": MaybeArray(Array("f", ("V", "D"))),
                   "val_labels_": MaybeArray(Array("i", ("V",)))}
    _head_params = ("init",)          # the start head travels inside the file

    def __init__(self, text_weights: Optional[np.ndarray] = None, init: Optional[Head] = None,
                 gammas: Sequence[float] = (0.002, 0.01, 0.02, 0.2), lambda_zs: float = 1.0,
                 lambda_fs: float = 0.5, outer_iters: int = 10, inner_iters: int = 5,
                 n_neighbors: int = 3, official_support_order: bool = True):
        self._keep_params(locals())

    def check_params(self):
        """The hyper-parameters checked (ranges added to the base's kinds)."""
        out = super().check_params()
        for name in ("outer_iters", "inner_iters"):
            check_number(name, out[name], 0, integer=True)
        check_number("n_neighbors", out["n_neighbors"], 1, integer=True)
        check_number("lambda_zs", out["lambda_zs"], 0.0)
        check_number("lambda_fs", out["lambda_fs"], 0.0)
        gammas = tuple(out["gammas"]) if not np.isscalar(out["gammas"]) else ()
        if not gammas:
            raise ValueError(f"gammas must be a non-empty list of numbers >= 0, got {out['gammas']!r}")
        out["gammas"] = tuple(check_number("gammas", g, 0.0) for g in gammas)
        return out

    def fit(self, features: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
            val_features: Optional[np.ndarray] = None,
            val_labels: Optional[np.ndarray] = None) -> "TransCLIP":
        """Keep the text weights; with (N, D) shots and labels, few-shot.

        Parameters: features / labels: the shots (every class needs one;
        none: zero-shot); val_features / val_labels: the validation shots
        gamma is chosen on (few-shot only).
        Returns: self.
        """
        self.check_params()
        t = self._text_weights()
        num_classes, dim = t.shape
        self.start_prototypes_ = check_start(self.init, num_classes, dim, "TransCLIP") \
            if self.init is not None else None
        self.support_ = self.support_labels_ = self.val_features_ = self.val_labels_ = None
        if features is not None or labels is not None:
            if features is None:
                raise ValueError("labels given without features (the shots)")
            self.support_ = as_features(features, "features (shots)", dim=dim)
            self.support_labels_ = as_labels(labels, self.support_.shape[0], num_classes,
                                             "labels (of the shots)")
            self.val_features_, self.val_labels_ = val_split(
                val_features, val_labels, dim, num_classes, self.support_.dtype)
        elif val_features is not None or val_labels is not None:
            raise ValueError("validation shots need shots: fit(features, labels, val_features, val_labels)")
        self.text_weights_ = t
        self._transduction_cache_ = None
        return self

    # -- the transduction --------------------------------------------------
    def transduce(self, features: np.ndarray) -> Transduction:
        """Run TransCLIP over (N, D) query features; returns a ``Transduction``."""
        self._check_fitted()
        p = self.check_params()
        x = as_features(features, dim=self.text_weights_.shape[1])
        # predict, predict_topk and logits on the same features share one run
        key = (x.shape, x.dtype.str, hashlib.blake2b(x, digest_size=16).digest(), id(self.init),
               tuple(v for k_, v in sorted(p.items()) if k_ not in ("text_weights", "init")))
        if getattr(self, "_transduction_cache_", None) is not None and self._transduction_cache_[0] == key:
            return self._transduction_cache_[1]
        n, dim = x.shape
        k = int(p["n_neighbors"])
        if n < k + 1:
            raise ValueError(f"TransCLIP needs more than n_neighbors={k} query features, got {n}")
        few_shot = self.support_ is not None
        num_classes = self.text_weights_.shape[0]

        # start predictions
        if self.init is not None and self.start_prototypes_ is None:
            y_hat = start_probabilities(self.init, x, num_classes, "TransCLIP")
            y_follows_z = not few_shot
        else:
            protos = self.text_weights_ if self.start_prototypes_ is None else self.start_prototypes_
            y_hat = softmax(LOGIT_SCALE * (x @ protos.T.astype(x.dtype)))
            y_follows_z = False
        z = y_hat.copy()

        # means and variance
        if few_shot:
            s = self.support_.astype(x.dtype)
            ys = np.zeros((s.shape[0], num_classes), dtype=x.dtype)
            ys[np.arange(s.shape[0]), self.support_labels_] = 1
            mu = _normalise(ys.T @ s)
        else:
            top = np.argpartition(-z, min(N_CONFIDENT, n) - 1, axis=0)[:min(N_CONFIDENT, n)]
            mu = np.empty((num_classes, dim), dtype=x.dtype)
            for c in range(num_classes):
                mu[c] = z[top[:, c], c] @ x[top[:, c]]
            mu = _normalise(mu)
        var = np.full(dim, 1.0 / dim, dtype=x.dtype)

        # the graph: rows [shots; queries] x query columns, the first neighbour dropped
        rows = np.concatenate([s, x]) if few_shot else x
        idx, sims = top_neighbours(rows, x, k + 1)
        w = knn_matrix(idx[:, 1:], sims[:, 1:], n)
        w_t = w.T.tocsr()
        n_s = s.shape[0] if few_shot else 0
        lam = float(p["lambda_fs"] if few_shot else p["lambda_zs"])
        x_sq = x * x
        graph_scale = Z_TEMPERATURE / (2 * k)

        def update_z(z, y_hat, loglik):
            if few_shot:
                stacked = np.concatenate([z, ys] if p["official_support_order"] else [ys, z])
            for _ in range(int(p["inner_iters"])):
                if few_shot:
                    own = (w @ z)[:n] if p["official_support_order"] else (w @ z)[n_s:]
                    msg = w_t @ stacked + own
                else:
                    msg = w_t @ z + w @ z
                a = loglik + graph_scale * msg
                a -= a.max(axis=1, keepdims=True)
                prior = z if y_follows_z else y_hat
                a = (prior ** lam) * np.exp(a / Z_TEMPERATURE)
                z = a / a.sum(axis=1, keepdims=True)
                if few_shot:
                    if p["official_support_order"]:
                        stacked[:n] = z
                    else:
                        stacked[n_s:] = z
            return z

        gammas = p["gammas"] if few_shot else (0.0,)
        val_nn = None
        if few_shot and self.val_features_ is not None:
            val_nn = top_neighbours(self.val_features_.astype(x.dtype), x, 1)[0][:, 0]
        best = None
        for gamma in gammas:
            for it in range(int(p["outer_iters"]) + 1):
                z = update_z(z, y_hat, _log_likelihood(x, x_sq, mu, var))
                if it == int(p["outer_iters"]):
                    break
                mu, var = self._update_gaussian(x, x_sq, z, mu, gamma, few_shot and (s, ys))
            if val_nn is not None:
                acc = float((z[val_nn].argmax(axis=1) == self.val_labels_).mean())
                if best is None or acc > best.val_accuracy:
                    best = Transduction(z.copy(), float(gamma), acc)
        if best is None:
            best = Transduction(z, float(gammas[-1]), None)
        self._transduction_cache_ = (key, best)
        return best

    @staticmethod
    def _update_gaussian(x, x_sq, z, mu, gamma, shots):
        """The means, then the variance around the new means."""
        n = x.dtype.type(x.shape[0])      # a Python int over 65535 would promote float32 to float64
        zx = z.T @ x / n                                        # (C, D)
        if shots:
            s, ys = shots
            shot_w = gamma * SHOT_WEIGHT / s.shape[0]
            mu = _normalise(zx + shot_w * (ys.T @ s))
        else:
            mu = _normalise(zx)
        # sum_i sum_c z_ic (x_i - mu_c)^2 / N, expanded
        num = (z.sum(axis=1) @ x_sq) / n - 2.0 * np.einsum("cd,cd->d", mu, zx) + \
            (z.sum(axis=0) / n) @ (mu * mu)
        den = z.sum() / n
        if shots and gamma > 0:
            diff = s - mu[ys.argmax(axis=1)]
            num = num + shot_w * np.einsum("sd,sd->d", diff, diff)
            den = den + shot_w * ys.sum()
        # a dimension every query shares (dead units of a small model) has variance 0: the
        # floor keeps its 1/var finite (CLIP features sit at ~1/D, far above it)
        return mu, np.maximum(num / den, np.finfo(x.dtype).eps)

    # -- prediction --------------------------------------------------------
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, C) TransCLIP assignments z of the query features (rows sum to 1)."""
        return self.transduce(features).probs

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) log z (floored at the dtype's smallest normal number)."""
        z = self.predict_proba(features)
        return np.log(np.maximum(z, np.finfo(z.dtype).tiny))


class TransCLIPZeroShot(TransCLIP):
    """TransCLIP-ZS whatever ``fit`` is given: shots and labels are ignored
    (for studies that hand every method the shots)."""

    def __init__(self, text_weights: Optional[np.ndarray] = None, init: Optional[Head] = None,
                 gammas: Sequence[float] = (0.002, 0.01, 0.02, 0.2), lambda_zs: float = 1.0,
                 lambda_fs: float = 0.5, outer_iters: int = 10, inner_iters: int = 5,
                 n_neighbors: int = 3, official_support_order: bool = True):
        super().__init__(text_weights, init, gammas, lambda_zs, lambda_fs, outer_iters,
                         inner_iters, n_neighbors, official_support_order)

    def fit(self, features=None, labels=None, val_features=None, val_labels=None) -> "TransCLIPZeroShot":
        """Keep the text weights (features, when given, are only checked for width)."""
        if features is not None:
            as_features(features, dim=self._text_weights().shape[1])
        return super().fit()
