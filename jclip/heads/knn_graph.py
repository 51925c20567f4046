"""Nearest neighbours by cosine, blockwise: the graphs of TransCLIP and ZLaP.

``top_neighbours(queries, base, k)`` never holds more than one block of the
(queries x base) similarity matrix: a block has at most ``BLOCK_BYTES`` of
similarities (64 MiB), so 100,000 x 100,000 features need ~1 GiB less than
the 40 GB a dense matrix would.  Within a block the k best columns are found
without a selection over every column of every row (``argpartition`` over
100,000 columns cost ~6x the block's matrix product): the columns are cut into
groups, the k-th largest group maximum bounds each row's k-th largest
similarity from below, and only the few entries at or above it are sorted,
best first (equal similarities: the lower column first).  The result is exact.
A graph of a set on itself (``base is queries``) multiplies only the square
tiles on and above the diagonal: each serves its rows, and along its columns
the rows of the tile below the diagonal it mirrors (half the products).

The last large result is kept (one entry, keyed by the bytes of both inputs):
TransCLIP, TransCLIP-ZS and ZLaP run on the same test features share one graph.
"""
import hashlib
from typing import Tuple

import numpy as np
import scipy.sparse as sp

# at most this many bytes of similarities are held at once
BLOCK_BYTES = 64 << 20
# column groups per row whose maxima bound the k-th best (more: fewer candidates, a longer max pass)
GROUPS = 1024
MIN_GROUP = 64          # ... of at least this many entries (a max over a few is a slow numpy reduction)
# problems with at least this many similarities are remembered, with at least MEMO_K neighbours
MEMO_MIN_ENTRIES = 10 ** 8
MEMO_K = 8
_memo: dict = {}


def block_rows(n_cols: int, itemsize: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many query rows one block of ``n_cols`` similarities may hold (>= 1)."""
    return max(1, int(block_bytes // max(1, n_cols * itemsize)))


def _threshold(s: np.ndarray, k: int, axis: int = 1) -> np.ndarray:
    """A value each row's (``axis`` 0: each column's) k-th largest entry reaches:
    the k-th largest of the maxima of k or more disjoint groups along ``axis``
    (each maximum is an entry, so at least k entries reach it)."""
    m = s.shape[axis]
    groups = min(m, max(k, min(GROUPS, m // MIN_GROUP)))
    size = m // groups
    if axis == 1:
        maxima = s[:, :groups * size].reshape(s.shape[0], groups, size).max(axis=2)
        return np.partition(maxima, groups - k, axis=1)[:, groups - k]
    maxima = s[:groups * size].reshape(groups, size, s.shape[1]).max(axis=1)
    return np.partition(maxima, groups - k, axis=0)[groups - k]


def _block_top(s: np.ndarray, k: int, axis: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """(index (n, k) int64, values (n, k)) of the k largest entries of each row
    (``axis`` 0: of each column, n its columns), best first, ties to the lower index."""
    if s.shape[axis] == k:
        t = s if axis == 1 else s.T
        cand = np.broadcast_to(np.arange(k), t.shape)
        order = np.lexsort((cand, -t), axis=1)
        return np.take_along_axis(cand, order, axis=1), np.take_along_axis(t, order, axis=1)
    thr = _threshold(s, k, axis)
    flat = np.flatnonzero(s >= (thr[:, None] if axis == 1 else thr[None, :]))
    rows, cols = np.divmod(flat, s.shape[1])
    vals = s.ravel()[flat]
    owner, other = (rows, cols) if axis == 1 else (cols, rows)
    order = np.lexsort((other, -vals, owner))            # by owner, best first, lower index
    n = s.shape[1 - axis]
    starts = np.searchsorted(owner[order], np.arange(n))
    take = order[(starts[:, None] + np.arange(k)).ravel()]
    return other[take].reshape(n, k), vals[take].reshape(n, k)


def _merge(index: np.ndarray, sims: np.ndarray, rows: slice, new_index: np.ndarray, new_sims: np.ndarray) -> None:
    """Keep, for ``rows``, the best of the lists held and the new candidates (in place)."""
    k = index.shape[1]
    cand_i = np.concatenate([index[rows], new_index], axis=1)
    cand_v = np.concatenate([sims[rows], new_sims], axis=1)
    order = np.lexsort((cand_i, -cand_v), axis=1)[:, :k]
    index[rows] = np.take_along_axis(cand_i, order, axis=1)
    sims[rows] = np.take_along_axis(cand_v, order, axis=1)


def _self_neighbours(x: np.ndarray, k: int, block_bytes: int) -> Tuple[np.ndarray, np.ndarray]:
    """top_neighbours(x, x, k) from half the products: square tiles above the
    diagonal serve their rows and, transposed, their columns' rows."""
    n = x.shape[0]
    side = max(k, int(np.sqrt(block_bytes // x.dtype.itemsize)))
    index = np.full((n, k), n, dtype=np.int64)          # placeholders sort after every real row
    sims = np.full((n, k), -np.inf, dtype=x.dtype)
    for a in range(0, n, side):
        rows_a = slice(a, min(n, a + side))
        for b in range(a, n, side):
            rows_b = slice(b, min(n, b + side))
            s = x[rows_a] @ x[rows_b].T
            i, v = _block_top(s, min(k, s.shape[1]))
            _merge(index, sims, rows_a, i + b, v)
            if b != a:
                i, v = _block_top(s, min(k, s.shape[0]), axis=0)
                _merge(index, sims, rows_b, i + a, v)
    return index, sims


def _digest(a: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a), digest_size=16).digest()


def top_neighbours(queries: np.ndarray, base: np.ndarray, k: int,
                   block_bytes: int = BLOCK_BYTES) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` most similar (dot product) to each query row.

    Parameters: queries (N, D), base (M, D) in one float dtype; k <= M.
    Returns: (index (N, k) int64, similarity (N, k) in the queries' dtype),
    best first; equal similarities list the lower row of ``base`` first.
    """
    n, m = queries.shape[0], base.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= {m} neighbours, got k={k}")
    key = None
    if n * m >= MEMO_MIN_ENTRIES:
        q = _digest(queries)
        key = (queries.shape, base.shape, queries.dtype.str, base.dtype.str, q,
               q if base is queries else _digest(base))
        if _memo.get("key") == key and _memo["index"].shape[1] >= k:
            return _memo["index"][:, :k].copy(), _memo["sims"][:, :k].copy()
        want = min(m, max(k, MEMO_K))       # a prefix of a longer list is the shorter list
    else:
        want = k
    if base is queries:
        index, sims = _self_neighbours(queries, want, block_bytes)
    else:
        index = np.empty((n, want), dtype=np.int64)
        sims = np.empty((n, want), dtype=queries.dtype)
        rows = block_rows(m, queries.dtype.itemsize, block_bytes)
        base_t = np.ascontiguousarray(base.T)
        for start in range(0, n, rows):
            index[start:start + rows], sims[start:start + rows] = _block_top(queries[start:start + rows] @ base_t,
                                                                             want)
    if key is not None:
        _memo.clear()
        _memo.update(key=key, index=index, sims=sims)
        return index[:, :k].copy(), sims[:, :k].copy()
    return index, sims


def knn_matrix(index: np.ndarray, sims: np.ndarray, n_cols: int, col_offset: int = 0,
               row_offset: int = 0, shape=None) -> sp.csr_matrix:
    """Sparse matrix with ``sims[i, j]`` at (row_offset + i, col_offset + index[i, j])."""
    n, k = index.shape
    rows = np.repeat(np.arange(n, dtype=np.int64) + row_offset, k)
    if shape is None:
        shape = (row_offset + n, col_offset + n_cols)
    return sp.csr_matrix((sims.ravel(), (rows, index.ravel() + col_offset)), shape=shape)
