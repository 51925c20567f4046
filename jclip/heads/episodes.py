"""Episodes: N-way K-shot tasks drawn from labelled data (multi-task training
and few-shot evaluation on held-out classes).

    n, k = parse_episode("5-way 1-shot")
    ep = sample_episode(labels, n, k, np.random.default_rng(0), query=15)
    ep.classes          # the N class ids drawn
    ep.support          # N*K indices into labels, class by class; ep.support_labels in 0..N-1
    ep.query            # the next ``query`` images of each class (None: all the rest)
"""
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

EpisodeSpec = Union[str, Sequence[int]]


def parse_episode(spec: EpisodeSpec) -> Tuple[int, int]:
    """(N, K) from "5-way 1-shot" (also "5-way-1-shot", "5 1") or a pair.

    Raises ValueError when it is neither or N < 1 or K < 1.
    """
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-?\s*way)?[\s,-]*(\d+)\s*(?:-?\s*shot)?\s*", spec, re.I)
        if not m:
            raise ValueError(f"episode must look like '5-way 1-shot', not {spec!r}")
        n, k = int(m.group(1)), int(m.group(2))
    else:
        try:
            n, k = (int(v) for v in spec)
        except (TypeError, ValueError):
            raise ValueError(f"episode must be 'N-way K-shot' or (N, K), not {spec!r}") from None
    if n < 1 or k < 1:
        raise ValueError(f"an episode needs N >= 1 classes and K >= 1 shots, not {n}-way {k}-shot")
    return n, k


@dataclass
class Episode:
    """One task: ``classes`` (N ids), ``support`` / ``query`` indices into the
    labels, with their labels as positions 0..N-1 in ``classes``."""

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def check_episode_data(labels: np.ndarray, n_way: int, k_shot: int, classes: Optional[np.ndarray] = None,
                       query: int = 0, what: str = "labels") -> np.ndarray:
    """The class ids episodes draw from (``classes`` or every label present).

    Raises ValueError when there are fewer than ``n_way`` of them or one has
    fewer than ``k_shot + query`` images.
    """
    labels = np.asarray(labels)
    pool = np.unique(labels) if classes is None else np.asarray(classes, dtype=np.int64)
    if len(pool) < n_way:
        raise ValueError(f"{what}: a {n_way}-way episode needs {n_way} classes, there are {len(pool)}")
    counts = np.array([(labels == c).sum() for c in pool])
    short = pool[counts < k_shot + query]
    if short.size:
        raise ValueError(f"{what}: {short.size} class(es) have fewer than {k_shot + query} images "
                         f"(first: class {int(short[0])} with {int(counts[counts < k_shot + query][0])}), "
                         f"as a {k_shot}-shot episode{f' with {query} queries' if query else ''} needs")
    return pool


def sample_episode(labels: np.ndarray, n_way: int, k_shot: int, rng: np.random.Generator,
                   query: Optional[int] = 0, classes: Optional[np.ndarray] = None) -> Episode:
    """Draw ``n_way`` classes (from ``classes``, default every label) and per
    class ``k_shot`` support images, then ``query`` query images (None: all
    the rest of the class), without replacement, from ``rng``.

    Returns: the Episode (call ``check_episode_data`` once first for errors
    that name the data).
    """
    labels = np.asarray(labels)
    pool = np.unique(labels) if classes is None else np.asarray(classes, dtype=np.int64)
    chosen = np.sort(rng.choice(pool, size=n_way, replace=False))
    support, query_ids, query_labels = [], [], []
    for pos, c in enumerate(chosen):
        idx = rng.permutation(np.flatnonzero(labels == c))
        support.append(idx[:k_shot])
        rest = idx[k_shot:] if query is None else idx[k_shot:k_shot + query]
        query_ids.append(rest)
        query_labels.append(np.full(len(rest), pos, np.int64))
    return Episode(chosen, np.concatenate(support), np.repeat(np.arange(n_way), k_shot),
                   np.concatenate(query_ids), np.concatenate(query_labels))
