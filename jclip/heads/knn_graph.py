"""Nearest neighbours by cosine, blockwise: the graphs of TransCLIP and ZLaP.

``top_neighbours(queries, base, k)`` never holds more than one block of the
(queries x base) similarity matrix: a block has at most ``BLOCK_BYTES`` of
similarities (64 MiB), so 100,000 x 100,000 features need ~1 GiB less than
the 40 GB a dense matrix would.  Within a block the k best columns are found
with ``argpartition`` and then sorted, best first (equal similarities: the
lower column first).
"""
from typing import Tuple

import numpy as np
import scipy.sparse as sp

# at most this many bytes of similarities are held at once
BLOCK_BYTES = 64 << 20


def block_rows(n_cols: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many query rows one block of ``n_cols`` similarities may hold (>= 1)."""
    return max(1, int(block_bytes // max(1, n_cols * itemsize)))


def top_neighbours(queries: np.ndarray, base: np.ndarray, k: int,
                   block_bytes: int = BLOCK_BYTES) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` most similar (dot product) to each query row.

    Parameters: queries (N, D), base (M, D) in one float dtype; k <= M.
    Returns: (index (N, k) int64, similarity (N, k) in the queries' dtype),
    best first.
    """
    n, m = queries.shape[0], base.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= {m} neighbours, got k={k}")
    index = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=queries.dtype)
    rows = block_rows(m, queries.dtype.itemsize, block_bytes)
    base_t = np.ascontiguousarray(base.T)
    for start in range(0, n, rows):
        s = queries[start:start + rows] @ base_t
        if k < m:
            cand = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            cand = np.broadcast_to(np.arange(m), s.shape)
        vals = np.take_along_axis(s, cand, axis=1)
        # best first; equal values keep the lower column first
        order = np.lexsort((cand, -vals), axis=1) if vals.size else cand
        index[start:start + rows] = np.take_along_axis(cand, order, axis=1)
        sims[start:start + rows] = np.take_along_axis(vals, order, axis=1)
    return index, sims


def knn_matrix(index: np.ndarray, sims: np.ndarray, n_cols: int, col_offset: int = 0,
               row_offset: int = 0, shape=None) -> sp.csr_matrix:
    """Sparse matrix with ``sims[i, j]`` at (row_offset + i, col_offset + index[i, j])."""
    n, k = index.shape
    rows = np.repeat(np.arange(n, dtype=np.int64) + row_offset, k)
    if shape is None:
        shape = (row_offset + n, col_offset + n_cols)
    return sp.csr_matrix((sims.ravel(), (rows, index.ravel() + col_offset)), shape=shape)
