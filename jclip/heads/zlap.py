"""ZLaP (Stojnic et al., CVPR'24; vladan-stojnic/ZLaP): zero-shot label propagation.

Transductive, over the features given to ``logits`` (the whole test set):
a graph of C class nodes (the text weights, or a start head's prototypes
such as InMaP's proxies) followed by the N image nodes.  Each image links
to its k most similar images (itself included) and its k most similar
class nodes; class nodes have no edges of their own.  Similarities below 0
become 0, image-to-class ones are raised to the power gamma.  With
``scale_sim`` (the official "proxy" setup, the default with an InMaP start)
every similarity is first min-max scaled over all edges.

W = A + A^T without its diagonal; Wn = D^-1/2 W D^-1/2 (a degree of 0
counts as 1); L = I - alpha Wn.  Class c's scores are the image entries of
L^-1 e_c, solved by conjugate gradient (tolerance 1e-6 relative to
|e_c| = 1, at most 50 iterations, as the official ``dfs_search``).
Official defaults: k 5, gamma 5, alpha 0.3.  The inductive setups (one
solve per test image) are not implemented.
"""
from typing import Optional

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .base import Head, as_features, check_number
from ..file_schema import Array, Bool
from .inmap import InMaP
from .knn_graph import knn_matrix, top_neighbours
from .start import check_start


def zlap_laplacian(x: np.ndarray, nodes: np.ndarray, k: int, gamma: float, alpha: float,
                   scale_sim: bool) -> sp.csr_matrix:
    """L = I - alpha D^-1/2 W D^-1/2 over [class nodes; images], (C + N) square."""
    n, c = x.shape[0], nodes.shape[0]
    im_idx, im_sim = top_neighbours(x, x, min(k, n))
    tx_idx, tx_sim = top_neighbours(x, nodes, min(k, c))
    if scale_sim:
        lo = min(im_sim.min(), tx_sim.min())
        hi = max(im_sim.max(), tx_sim.max())
        im_sim, tx_sim = (im_sim - lo) / (hi - lo), (tx_sim - lo) / (hi - lo)
    im_sim = np.maximum(im_sim, 0)
    tx_sim = np.maximum(tx_sim, 0) ** gamma
    size = c + n
    a = knn_matrix(im_idx, im_sim, n, col_offset=c, row_offset=c, shape=(size, size)) + \
        knn_matrix(tx_idx, tx_sim, c, row_offset=c, shape=(size, size))
    w = (a + a.T).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    deg = np.asarray(w.sum(axis=1)).ravel()
    deg[deg == 0] = 1
    d = sp.diags(1.0 / np.sqrt(deg))
    return (sp.identity(size, dtype=w.dtype, format="csr") - alpha * (d @ w @ d)).tocsr()


class ZLaP(Head):
    """ZLaP head: logits(x) = label-propagation scores (N, C) over x's kNN graph.

    Parameters: text_weights (C, D); init: a fitted InMaP or ZeroShot whose
    prototypes become the class nodes; k, gamma, alpha: the official 5, 5,
    0.3; scale_sim: None = True with an InMaP start (the official "proxy"
    setup), else False; tol, maxiter: the CG stop (1e-6, 50).
    fit(features=None, ...) keeps the class nodes; labels are ignored.
    Fitted: nodes_ (C, D), scale_sim_.
    """

    _fitted = ("nodes_", "scale_sim_")
    fitted_spec = {"nodes_": Array("f", ("C", "D")), "scale_sim_": Bool()}
    _head_params = ("init",)          # the start head travels inside the file

    def __init__(self, text_weights: Optional[np.ndarray] = None, init: Optional[Head] = None,
                 k: int = 5, gamma: float = 5.0, alpha: float = 0.3, scale_sim: Optional[bool] = None,
                 tol: float = 1e-6, maxiter: int = 50):
        self._keep_params(locals())

    def check_params(self):
        """The hyper-parameters checked (ranges added to the base's kinds)."""
        out = super().check_params()
        check_number("k", out["k"], 1, integer=True)
        check_number("gamma", out["gamma"], 0.0)
        alpha = check_number("alpha", out["alpha"], 0.0)
        if alpha >= 1:
            raise ValueError(f"alpha must be in [0, 1), got {out['alpha']!r}")
        check_number("tol", out["tol"], 0.0, strictly=True)
        check_number("maxiter", out["maxiter"], 1, integer=True)
        if out["scale_sim"] is not None and not isinstance(out["scale_sim"], (bool, np.bool_)):
            raise ValueError(f"scale_sim must be true, false or None, got {out['scale_sim']!r}")
        return out

    def fit(self, features: Optional[np.ndarray] = None, labels=None, val_features=None,
            val_labels=None) -> "ZLaP":
        """Keep the class nodes (features, when given, are only checked for width)."""
        p = self.check_params()
        t = self._text_weights()
        nodes = None
        if self.init is not None:
            nodes = check_start(self.init, t.shape[0], t.shape[1], "ZLaP")
            if nodes is None:
                raise ValueError(f"ZLaP: init must give class prototypes (InMaP or ZeroShot), "
                                 f"not a {type(self.init).__name__}")
        if features is not None:
            as_features(features, dim=t.shape[1])
        self.nodes_ = t if nodes is None else nodes
        self.scale_sim_ = bool(isinstance(self.init, InMaP) if p["scale_sim"] is None else p["scale_sim"])
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) propagation scores of the (N, D) features, transductively."""
        self._check_fitted()
        p = self.check_params()
        x = as_features(features, dim=self.nodes_.shape[1])
        nodes = self.nodes_.astype(x.dtype)
        c = nodes.shape[0]
        lap = zlap_laplacian(x, nodes, int(p["k"]), float(p["gamma"]), float(p["alpha"]),
                             self.scale_sim_)
        scores = np.empty((x.shape[0], c), dtype=x.dtype)
        b = np.zeros(lap.shape[0], dtype=x.dtype)
        for cls in range(c):
            b[:] = 0
            b[cls] = 1
            f, _ = spla.cg(lap, b, rtol=float(p["tol"]), atol=0.0, maxiter=int(p["maxiter"]))
            scores[:, cls] = f[c:]
        return scores
