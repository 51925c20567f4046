"""Image features of a large collection, in shards that survive interruption.

    python -m jclip.extract --model ViT-B/32 --images DIR_OR_LIST --out FEATURES_DIR
                            [--shard-size 4096] [--dtype float32|float16] [--batch-size 64]
    mpirun -np 8 python -m jclip.extract ...        # the same files, 8 ranks encoding

The images: every file with an image extension under DIR (recursively), or
the paths listed one per line in a text file (``path`` or ``path label``;
relative paths are relative to the list's folder); sorted, duplicates once.

FEATURES_DIR holds
  ``index.json``     model, weights SHA-256, preprocessing, dtype, width,
                     shard size, image count and the SHA-256 of paths.txt
  ``paths.txt``      the sorted absolute paths, one per line (row i = line i)
  ``shard-NNNNN.npy`` (rows, D) L2-normalised features of ``shard-size`` images
  ``shard-NNNNN.json`` the shard's first row, row count, SHA-256 of its .npy and
                     its unreadable images; written after the .npy, so a shard
                     counts as done only when both are there and agree
Every file is written atomically.  A second run with the same model, list
and settings skips the shards that are done (a half-written or corrupt one
is encoded again, never trusted); another model or list in the same folder
is refused.  An image that cannot be decoded gets a zero row and is named on
stderr and in its shard's record.

Under mpirun the shards still to do are split into equal contiguous runs,
one per rank; in each round every rank encodes one shard, rank 0 gathers them
and writes them (only rank 0 writes).  ``load_features(FEATURES_DIR)`` reads
the result back, checked (what ``--features`` options accept).
"""
import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import distributed
from .data.lists import ListFormatError, read_lines, resolve
from .file_schema import Array, DictOf, FileFormatError, Int, Record, Sha256, Str, read_json, read_npy
from .io import WriteCheckError, atomic_open, atomic_write_text, fsync_dir, sha256_file
from .progress import progress

VERSION = 1
INDEX, PATHS = "index.json", "paths.txt"
DTYPES = ("float32", "float16")

# the schemas of the folder's files (docs/security.md); a shard's array is
# (count, dim) of the index's dtype, its SHA-256 the one its record holds
INDEX_SCHEMA = Record({
    "version": Int(VERSION, VERSION), "model": Str(), "weights_sha256": Sha256(),
    "preprocess_id": Str(), "dtype": Str(DTYPES), "dim": Int(1, 1 << 16),
    "shard_size": Int(1, 1 << 30), "images": Int(1, 1 << 40), "paths_sha256": Sha256()})
SHARD_SCHEMA = Record({"first": Int(0, 1 << 40), "count": Int(1, 1 << 30), "sha256": Sha256(),
                       "unreadable": DictOf(Str(max_len=4096), key=Str(max_len=4096))})


class FeaturesError(ValueError):
    """A features folder that is not what was asked for (or not complete)."""


class DamagedFeaturesError(FeaturesError, FileFormatError):
    """A file of a features folder that breaks its schema (names the file and key)."""


def list_images(source: str) -> List[str]:
    """The sorted, distinct absolute image paths of a folder (recursively, by
    extension) or of a list file (first field of each line).

    Raises FileNotFoundError for a missing source, ListFormatError for an empty one.
    """
    from .data.images import IMAGE_EXTS
    if os.path.isdir(source):
        found = [os.path.join(d, f) for d, _, files in os.walk(source) for f in files
                 if f.lower().endswith(IMAGE_EXTS)]
    elif os.path.isfile(source):
        found = [resolve(line.rsplit(" ", 1)[0] if _labelled(line) else line, source)
                 for _, line in read_lines(source, "image list")]
    else:
        raise FileNotFoundError(f"{source}: no such folder or list file")
    paths = sorted({os.path.abspath(p) for p in found})
    if not paths:
        raise ListFormatError(f"{source}: no images (extensions {', '.join(IMAGE_EXTS)})"
                              if os.path.isdir(source) else f"{source}: the list is empty")
    return paths


def _labelled(line: str) -> bool:
    """A ``path label`` line (the label an integer)."""
    parts = line.rsplit(" ", 1)
    return len(parts) == 2 and parts[1].lstrip("-").isdigit()


def _paths_text(paths: Sequence[str]) -> str:
    for p in paths:
        if "\n" in p or "\r" in p:
            raise ListFormatError(f"{p!r}: a path with a line break cannot be indexed")
    return "".join(p + "\n" for p in paths)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def read_index(folder: str) -> Dict:
    """The folder's index.json, checked against INDEX_SCHEMA (FileFormatError)."""
    return read_json(os.path.join(folder, INDEX), INDEX_SCHEMA, max_bytes=1 << 20)


def read_paths(folder: str, index: Dict) -> List[str]:
    """paths.txt: the bytes index.json's paths_sha256 names, one path a line,
    as many lines as it counts (FileFormatError otherwise)."""
    path = os.path.join(folder, PATHS)
    try:
        with open(path, "rb") as f:
            data = f.read(index["images"] * 8192 + 1)   # far beyond any honest path list
    except OSError as e:
        raise FileFormatError(path, "", f"cannot read ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != index["paths_sha256"]:
        raise FileFormatError(path, "", f"does not match {INDEX} (paths_sha256 differs)")
    try:
        paths = data.decode("utf-8").split("\n")[:-1]
    except UnicodeDecodeError as e:
        raise FileFormatError(path, "", f"not UTF-8 text (byte {e.start})") from None
    if len(paths) != index["images"]:
        raise FileFormatError(path, "", f"{len(paths)} paths, {INDEX} counts {index['images']}")
    return paths


def read_shard(folder: str, i: int, first: int, count: int, index: Dict) -> np.ndarray:
    """Shard i's array, after its record (SHARD_SCHEMA, rows ``first`` ..
    ``first + count``) and the array's SHA-256 and header (count, dim) of the
    index's dtype are checked.  FileFormatError names the file and key."""
    rec_path = os.path.join(folder, shard_name(i) + ".json")
    npy = os.path.join(folder, shard_name(i) + ".npy")
    rec = read_json(rec_path, SHARD_SCHEMA, max_bytes=64 << 20)
    for key, want in (("first", first), ("count", count)):
        if rec[key] != want:
            raise FileFormatError(rec_path, key, f"{rec[key]}, expected {want} (from {INDEX})")
    try:
        digest = sha256_file(npy)
    except OSError as e:
        raise FileFormatError(npy, "", f"missing or incomplete ({e.strerror or e}); "
                                       "run jclip.extract again to finish it") from None
    if digest != rec["sha256"]:
        raise FileFormatError(npy, "", f"missing or incomplete (SHA-256 differs from the sha256 "
                                       f"{os.path.basename(rec_path)} records); run jclip.extract again")
    return read_npy(npy, Array((index["dtype"],), ("count", "dim")),
                    bind={"count": count, "dim": index["dim"]})


def _shard_done(folder: str, i: int, first: int, count: int, index: Dict) -> bool:
    """True when shard i's record and array are complete and agree."""
    try:
        read_shard(folder, i, first, count, index)
        return True
    except FileFormatError:
        return False


def _prepare(folder: str, index: Dict, paths_text: str) -> None:
    """Write (or check) the folder's index and path list: rank 0, before any shard."""
    path = os.path.join(folder, INDEX)
    if os.path.isfile(path):
        try:
            old = read_index(folder)
        except FileFormatError as e:
            raise FeaturesError(f"{e}; remove the folder or use another --out") from None
        differs = [k for k in index if old.get(k) != index[k]]
        if differs:
            raise FeaturesError(f"{folder}: holds other features ({', '.join(differs)} differ: "
                                f"{', '.join(f'{k}={old.get(k)!r}' for k in differs[:2])}); "
                                "use another --out")
    os.makedirs(folder, exist_ok=True)
    if not os.path.isfile(os.path.join(folder, PATHS)) or \
            sha256_file(os.path.join(folder, PATHS)) != index["paths_sha256"]:
        atomic_write_text(os.path.join(folder, PATHS), paths_text)
    if not os.path.isfile(path):
        atomic_write_text(path, json.dumps(index, indent=1) + "\n",
                          check=lambda tmp: read_json(tmp, INDEX_SCHEMA))


def _write_shard(folder: str, i: int, first: int, feats: np.ndarray, unreadable: Dict[str, str]) -> None:
    """The shard's array (durably written, read back and compared), then its
    record with the SHA-256 of the bytes verified: a record never vouches for
    an array that did not reach the disk whole."""
    npy = os.path.join(folder, shard_name(i) + ".npy")
    rec_path = os.path.join(folder, shard_name(i) + ".json")
    if os.path.exists(rec_path):        # an old record must not outlive the array it describes
        os.remove(rec_path)
        fsync_dir(folder)
    want, digest = np.ascontiguousarray(feats), []

    def verify(tmp):
        try:
            got = read_npy(tmp, Array((want.dtype.name,), want.shape))
        except FileFormatError as e:
            raise WriteCheckError(f"{npy}: the array read back is damaged ({e.problem})") from None
        if not np.array_equal(got, want, equal_nan=True):
            raise WriteCheckError(f"{npy}: the array read back differs from what was written")
        digest.append(sha256_file(tmp))
    with atomic_open(npy, check=verify) as f:
        np.save(f, want, allow_pickle=False)
    rec = {"first": first, "count": int(want.shape[0]), "sha256": digest[0],
           "unreadable": dict(sorted(unreadable.items()))}
    atomic_write_text(rec_path, json.dumps(rec, indent=1) + "\n",
                      check=lambda tmp: read_json(tmp, SHARD_SCHEMA))


def extract(model_name: str, images: str, out: str, shard_size: int = 4096, dtype: str = "float32",
            batch_size: int = 64, workers: Optional[int] = None, device: Optional[str] = None) -> Dict:
    """Encode every image of ``images`` into shards under ``out`` (resumable).

    Parameters: model_name: a CLIP name or weights file (``jclip.load``);
    images: a folder or a list file; out: the features folder; shard_size:
    images per shard (a multiple of batch_size keeps every forward pass the
    same whatever the rank count); dtype: 'float32' or 'float16' on disk.
    Every rank under mpirun calls this with the same arguments.
    Returns: on rank 0 {"images", "shards", "encoded", "skipped", "unreadable",
    "seconds"}; on the other ranks {}.
    """
    import jclip
    from .data.images import iter_batches
    from .features.encode import encode_images
    from .models.load import weights_sha256
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be at least 1")
    t0 = time.time()
    paths = list_images(images)
    text = _paths_text(paths)
    model, pre = jclip.load(model_name, device=device)
    dim = int(model.text_projection.shape[1])
    index = {"version": VERSION, "model": str(model_name), "weights_sha256": weights_sha256(model),
             "preprocess_id": pre.id, "dtype": dtype, "dim": dim, "shard_size": int(shard_size),
             "images": len(paths), "paths_sha256": hashlib.sha256(text.encode()).hexdigest()}
    n_shards = -(-len(paths) // shard_size)
    spans = [(i, i * shard_size, min(len(paths), (i + 1) * shard_size)) for i in range(n_shards)]
    todo = None
    if distributed.is_root():
        _prepare(out, index, text)
        todo = [i for i, a, b in spans if not _shard_done(out, i, a, b - a, index)]
    todo = distributed.broadcast_object(todo)
    mine = todo[distributed.shard(len(todo))]
    rounds = -(-len(todo) // distributed.world_size())
    bar = progress(total=sum(spans[i][2] - spans[i][1] for i in todo),
                   desc=f"extracting {model_name}", unit="img", enabled=distributed.is_root())
    if distributed.is_root() and len(todo) < n_shards:
        print(f"{out}: {n_shards - len(todo)} of {n_shards} shards already done; resuming", flush=True)
    unreadable: Dict[str, str] = {}
    t_enc = time.time()
    for r in range(rounds):
        part = b""
        if r < len(mine):
            i, a, b = spans[mine[r]]
            feats = np.zeros((b - a, dim), np.float32)
            errs: Dict[str, str] = {}
            for idx, batch, bad in iter_batches(paths[a:b], pre, batch_size, workers):
                if len(idx):
                    feats[idx] = encode_images(model, batch, batch_size)
                errs.update(bad)
            part = json.dumps({"shard": i, "errors": errs}).encode() + b"\n" + \
                distributed.array_bytes(feats.astype(dtype))
        # rank 0 writes every rank's shard of this round
        for got in distributed.allgather_bytes(part):
            if not got or not distributed.is_root():
                continue
            head, body = got.split(b"\n", 1)
            rec = json.loads(head.decode())
            i, a, b = spans[rec["shard"]]
            _write_shard(out, i, a, distributed.array_from_bytes(body), rec["errors"])
            for p, msg in sorted(rec["errors"].items()):
                print(f"warning: {p}: unreadable image ({msg.split(': ', 1)[-1]})", file=sys.stderr)
            unreadable.update(rec["errors"])
            bar.update(b - a)
    bar.close()
    if not distributed.is_root():
        return {}
    seconds, encoding = time.time() - t0, time.time() - t_enc
    encoded = sum(spans[i][2] - spans[i][1] for i in todo)
    print(f"{out}: {len(paths)} images in {n_shards} shards ({encoded} encoded now, "
          f"{len(unreadable)} unreadable) in {seconds:.1f} s; encoding {encoding:.1f} s, "
          f"{encoded / max(encoding, 1e-9):.1f} images/s on {distributed.world_size()} rank(s)", flush=True)
    return {"images": len(paths), "shards": n_shards, "encoded": encoded,
            "skipped": n_shards - len(todo), "unreadable": sorted(unreadable), "seconds": seconds,
            "encoding_s": encoding}


@dataclass
class Features:
    """A features folder read back: ``paths`` (N,), ``features`` (N, D)
    float32, ``readable`` (N,) bool (False: unreadable, zero row), ``index``."""
    paths: List[str]
    features: np.ndarray
    readable: np.ndarray
    index: Dict

    def rows(self, paths: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(features, readable) of ``paths`` (absolute or not), in that order.

        Raises FeaturesError naming the first path the folder does not hold.
        """
        where = {p: i for i, p in enumerate(self.paths)}
        idx = []
        for p in paths:
            i = where.get(os.path.abspath(p))
            if i is None:
                raise FeaturesError(f"{p}: not in the features folder ({len(self.paths)} images); "
                                    "run jclip.extract on a list that holds it")
            idx.append(i)
        return self.features[idx], self.readable[idx]


def load_features(folder: str, model: Optional[str] = None) -> Features:
    """The features ``jclip.extract`` wrote, every shard checked (SHA-256).

    Parameters: model: when given, the model name the folder must hold.
    Raises FeaturesError naming the folder or shard that is missing, corrupt
    or of another model.
    """
    missing = [name for name in (INDEX, PATHS) if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FeaturesError(f"{folder}: not a features folder of jclip.extract (no {' and no '.join(missing)})")
    try:
        index = read_index(folder)
        if model is not None and index["model"] != model:
            raise FeaturesError(f"{folder}: features of {index['model']!r}, not {model!r}")
        paths = read_paths(folder, index)
        size = index["shard_size"]
        parts = []
        for i in range(-(-len(paths) // size)):
            a, b = i * size, min(len(paths), (i + 1) * size)
            base = os.path.join(folder, shard_name(i))
            if not os.path.isfile(base + ".json") or not os.path.isfile(base + ".npy"):
                raise FeaturesError(f"{base}.npy: missing or incomplete; run jclip.extract again to finish it")
            parts.append(read_shard(folder, i, a, b - a, index).astype(np.float32))
    except DamagedFeaturesError:
        raise
    except FileFormatError as e:
        raise DamagedFeaturesError(e.path, e.key, e.problem) from None
    feats = np.concatenate(parts)
    return Features(paths, feats, np.linalg.norm(feats, axis=1) > 0.5, index)


def load_features_for(folder: str, weights_sha256: str, preprocess_id: str, who: str) -> Features:
    """``load_features(folder)``, refused (FeaturesError naming the folder)
    unless it holds features of these weights and this preprocessing
    (``who`` names the model in the message)."""
    f = load_features(folder)
    for what, want in (("weights_sha256", weights_sha256), ("preprocess_id", preprocess_id)):
        if f.index[what] != want:
            raise FeaturesError(f"{folder}: features of other {what.split('_')[0]} than "
                                f"{who} ({str(f.index[what])[:16]} vs {want[:16]})")
    return f


def build_parser():
    """The parser of ``python -m jclip.extract``."""
    from .commands import CommandParser, device, positive_int
    p = CommandParser(prog="python -m jclip.extract", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="CLIP name (ViT-B/32, RN101, ...) or weights file")
    p.add_argument("--images", required=True, help="a folder (searched recursively) or a list file")
    p.add_argument("--out", required=True, help="the features folder (resumed when it exists)")
    p.add_argument("--shard-size", type=positive_int, default=4096, help="images per shard (default 4096)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="on-disk dtype (default float32)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=positive_int, default=None, help="decoding threads")
    p.add_argument("--device", type=device, default=None, help="cpu or cuda (default: CUDA when available)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``python -m jclip.extract``; returns the exit status (jclip.commands)."""
    from .commands import UsageError, run
    distributed.start()

    def work() -> None:
        a = build_parser().parse_args(argv)
        if not os.path.exists(a.images):
            raise UsageError(f"--images {a.images}: no such folder or list file")
        extract(a.model, a.images, a.out, a.shard_size, a.dtype, a.batch_size, a.workers, a.device)
    return run(work)


if __name__ == "__main__":
    sys.exit(main())
