"""Feature cache: encode images (or prompts) once per model and preprocessing.

A cache file is keyed by what produced the features - model name, checkpoint
SHA-256, preprocessing id - and by the list of inputs.  It stores, next to the
features, each image's size and mtime (prompts: the exact strings), so a
second run with the same inputs reads the features back, and an image whose
size or mtime changed is re-encoded (only that image), never silently reused.
Prompts are cached one by one in a store per model: a new class list or
template set encodes only the prompts not seen before.
Files are written to a temporary name and os.replace'd, so an interrupted run
leaves either the old cache or the new one.  Each file carries the SHA-256 of
its features and stamps: a truncated or corrupt file (a full disk, a copy cut
short, a flipped bit) is reported in one line and encoded afresh, never
trusted and never an error that repeats on every run.

The encoder is any callable ``list of items -> (len, D) array``, so this module
does not depend on the model code.
"""
import hashlib
import json
import os
import re
import sys

import numpy as np

from ..file_schema import (Array, FileFormatError, Int, ListOf, Record, Sha256, Str, check_arrays,
                           check_value, loads_bounded, read_npz)
from ..io import atomic_save_npz
from ..progress import progress as progress_bar

FORMAT_VERSION = 2   # 2: entries carry a checksum

# the schemas of a cache file (docs/security.md): an image cache holds
# features (N, D), stamps (N, 2) and meta (its items the N paths); a prompt
# store features (N, D) and meta (its items the N prompts)
_IDENTITY = Record({"model_name": Str(), "weights_sha256": Str(), "preprocess_id": Str()})
META_SCHEMA = Record({"version": Int(FORMAT_VERSION, FORMAT_VERSION), "identity": _IDENTITY,
                      "items": ListOf(Str()), "sha256": Sha256()})
IMAGE_ARRAYS = {"features": Array("f", ("N", "D")), "stamps": Array(("int64",), ("N", 2)),
                "meta": Array("U", ())}
PROMPT_ARRAYS = {"features": Array("f", ("N", "D")), "meta": Array("U", ())}


def read_entry(path, arrays_schema):
    """(meta, arrays) of a cache file, checked against its schema (the npz
    headers against the bytes held, meta JSON bounded, every array's dtype and
    shape, N = len(items)) and its checksum; None for a file of an older
    layout.  Raises FileFormatError naming the file and key."""
    arrays = read_npz(path)
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise FileFormatError(path, "meta", "missing or not a text array")
    meta = check_value(path, loads_bounded(str(arrays["meta"]), path), Record({}, extra=True), "meta")
    if meta.get("version") != FORMAT_VERSION:
        return None                         # an older layout: encode afresh
    meta = check_value(path, meta, META_SCHEMA, "meta")
    check_arrays(path, arrays, arrays_schema, bind={"N": len(meta["items"])})
    stamps = arrays["stamps"] if "stamps" in arrays_schema else \
        np.frombuffer(json.dumps(meta["items"]).encode(), np.uint8)
    if meta["sha256"] != _checksum(arrays["features"], stamps):
        raise FileFormatError(path, "meta.sha256", "differs from the SHA-256 of the features and "
                                                   + ("stamps" if "stamps" in arrays_schema else "prompts"))
    return meta, arrays


def _file_stamps(paths):
    """(size, mtime_ns) per file; a missing file is a clear error."""
    stamps = np.empty((len(paths), 2), dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError as e:
            raise FileNotFoundError(f"cannot encode {p!r}: {e.strerror}") from e
        stamps[i] = (st.st_size, st.st_mtime_ns)
    return stamps


def _cache_path(cache_dir, kind, identity, items):
    digest = hashlib.sha256(json.dumps([identity, items]).encode()).hexdigest()[:20]
    model = re.sub(r"[^A-Za-z0-9.-]+", "-", identity["model_name"]).strip("-")
    return os.path.join(cache_dir, f"{kind}-{model}-{digest}.npz")


def _checksum(feats, stamps):
    h = hashlib.sha256(str((feats.dtype.str, feats.shape)).encode())
    h.update(np.ascontiguousarray(feats).tobytes())
    h.update(np.ascontiguousarray(stamps).tobytes())
    return h.hexdigest()


def _read(path, identity, items):
    """(features, stamps) from a matching cache file, or None (missing,
    foreign, stale or corrupt; a corrupt one is reported on stderr)."""
    if not os.path.exists(path):
        return None
    try:
        found = read_entry(path, IMAGE_ARRAYS)
        if found is None or found[0]["identity"] != identity or found[0]["items"] != items:
            return None
        feats, stamps = found[1]["features"], found[1]["stamps"]
    except FileFormatError as e:
        _report_corrupt(e)
        return None
    return feats, stamps


def _report_corrupt(e: FileFormatError) -> None:
    where = f"{e.key}: " if e.key else ""
    print(f"feature cache {e.path} is corrupt ({where}{e.problem[:160]}); encoding again", file=sys.stderr)


def _encode(items, encoder, batch_size, desc, progress, unit):
    """Encoder output for ``items`` in batches, checked and stacked; the bar
    counts items (``unit``: "img" or "prompt"), not batches."""
    out = []
    with progress_bar(total=len(items), desc=desc, unit=unit, enabled=progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            f = np.asarray(encoder(chunk))
            if f.ndim != 2 or f.shape[0] != len(chunk):
                raise ValueError(f"encoder returned shape {f.shape} for {len(chunk)} inputs")
            if not np.isfinite(f).all():
                raise ValueError(f"encoder returned NaN or infinite features for a batch "
                                 f"starting at {chunk[0]!r}")
            out.append(f)
            bar.update(len(chunk))
    return np.concatenate(out)


def _cached(kind, items, keys, stamps, encoder, identity, cache_dir, batch_size,
            progress):
    if not items:
        raise ValueError(f"no {kind} to encode")
    path = _cache_path(cache_dir, kind, identity, keys)
    found = _read(path, identity, keys)
    if found is not None:
        feats, old = found
        stale = np.flatnonzero((old != stamps).any(axis=1))
        if stale.size == 0:
            return feats
        fresh = _encode([items[i] for i in stale], encoder, batch_size,
                        f"re-encoding {stale.size} changed {kind}", progress, "img")
        if fresh.shape[1] != feats.shape[1]:
            raise ValueError(f"encoder width {fresh.shape[1]} differs from the "
                             f"cached {feats.shape[1]} for {path}")
        feats = feats.copy()
        feats[stale] = fresh.astype(feats.dtype)
    else:
        feats = _encode(items, encoder, batch_size, f"encoding {kind}", progress, "img")
    meta = json.dumps({"version": FORMAT_VERSION, "identity": identity, "items": keys,
                       "sha256": _checksum(feats, stamps)})
    atomic_save_npz(path, {"features": feats, "stamps": stamps, "meta": np.array(meta)})
    return feats


def encode_images_cached(paths, encoder, model_name, weights_sha256,
                         preprocess_id, cache_dir, batch_size=64, progress=True):
    """(N, D) features of ``paths``, from the cache when nothing changed.

    encoder(list of paths) -> (len, D) array (raw; normalise afterwards).
    """
    paths = [os.path.abspath(os.fspath(p)) for p in paths]
    identity = {"model_name": str(model_name), "weights_sha256": str(weights_sha256),
                "preprocess_id": str(preprocess_id)}
    return _cached("images", paths, paths, _file_stamps(paths), encoder, identity,
                   cache_dir, int(batch_size), progress)


def _read_texts(path, identity):
    """{prompt: row} and the features of a prompt store, or ({}, None)
    (missing, foreign or corrupt; a corrupt one is reported on stderr)."""
    if not os.path.exists(path):
        return {}, None
    try:
        found = read_entry(path, PROMPT_ARRAYS)
        if found is None or found[0]["identity"] != identity:
            return {}, None
        feats, texts = found[1]["features"], found[0]["items"]
    except FileFormatError as e:
        _report_corrupt(e)
        return {}, None
    return {t: i for i, t in enumerate(texts)}, feats


def encode_texts_cached(texts, encoder, model_name, weights_sha256, cache_dir,
                        batch_size=256, progress=True):
    """(N, D) features of the exact prompt strings ``texts``, cached per prompt.

    One store per model holds every prompt it encoded, whatever list it came
    in: another class list (test.sh after train.sh, the sweep's template sets)
    encodes only the prompts the store lacks, and adds them.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("no texts to encode")
    identity = {"model_name": str(model_name), "weights_sha256": str(weights_sha256),
                "preprocess_id": "text"}
    path = _cache_path(cache_dir, "prompts", identity, [])
    where, feats = _read_texts(path, identity)
    missing = list(dict.fromkeys(t for t in texts if t not in where))
    if missing:
        fresh = _encode(missing, encoder, int(batch_size), "encoding prompts", progress, "prompt")
        if feats is not None and fresh.shape[1] != feats.shape[1]:
            raise ValueError(f"encoder width {fresh.shape[1]} differs from the "
                             f"cached {feats.shape[1]} for {path}")
        feats = fresh if feats is None else np.concatenate([feats, fresh.astype(feats.dtype)])
        where.update({t: len(where) + i for i, t in enumerate(missing)})
        items = sorted(where, key=where.get)
        meta = json.dumps({"version": FORMAT_VERSION, "identity": identity, "items": items,
                           "sha256": _checksum(feats, np.frombuffer(json.dumps(items).encode(), np.uint8))})
        atomic_save_npz(path, {"features": feats, "meta": np.array(meta)})
    return feats[[where[t] for t in texts]]


def cached_text_encoder(encoder, model_name, weights_sha256, cache_dir, **kw):
    """encode_text callable for zeroshot.text_classifier_weights, cached."""
    return lambda texts: encode_texts_cached(texts, encoder, model_name,
                                             weights_sha256, cache_dir, **kw)
