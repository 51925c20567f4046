"""Checkpoint files: read any supported checkpoint as numpy, write jclip's.

This module only dispatches, by content on reading and by name or ``fmt`` on
writing, to the module that owns each format: :mod:`.safetensors_io`
(jclip's default: tensors plus string metadata whose key ``"jclip_meta"``
holds the JSON of jclip's meta), :mod:`.pkl` (Jittor's own format, what
``jittor.save`` writes and ``jittor.load`` reads) and :mod:`.torch_reader`
(TorchScript and torch zip files) and :mod:`.torch_legacy` (pre-1.6
torch files); torch files are only read.

Reading never executes code from the file and never trusts a size it
declares.  Every failure is one :class:`CheckpointError` naming the file (and
the tensor, where there is one); float tensors must be finite.  Whether a
state dict fits its architecture is the catalogue's check
(``jclip.catalog.prepare_state_dict``); conversion is :mod:`.convert`.
"""
import json
import os
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from . import pkl as _pkl
from . import safetensors_io
from . import torch_legacy, torch_reader
from .safe_pickle import FormatError
from ..file_schema import FileFormatError, Int, Record, Sha256, Str, check_value
from ..io import atomic_open

META_KEY = _pkl.META_KEY             # the meta's key inside a .pkl
ST_META_KEY = safetensors_io.ST_META_KEY
FORMAT = "jclip-weights"
FORMAT_VERSION = 1
FORMATS = ("safetensors", "pkl")     # what save_state_dict writes


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file."""


def format_for_path(path, fmt=None):
    """The format ``save_state_dict`` writes to ``path``: ``fmt`` when given,
    else "pkl" for a ``.pkl`` name and "safetensors" for anything else."""
    if fmt is None:
        fmt = "pkl" if os.fspath(path).endswith(".pkl") else "safetensors"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


# ------------------------------------------------------------------ reading

def _describe_junk(head):
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return ("is an HTML/XML page, not a checkpoint (a failed download? "
                "delete it and download again)")
    return "is not a checkpoint (neither a torch file nor a pickle)"


def _unwrap(obj, path):
    """The flat name -> array dict inside a loaded object."""
    for _ in range(2):   # {'model': ...} / {'state_dict': ...}, possibly nested
        if isinstance(obj, dict):
            inner = next((obj[k] for k in ("state_dict", "model")
                          if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = OrderedDict()
    for k, v in obj.items():
        if k == META_KEY:
            continue
        if not isinstance(k, str):
            raise CheckpointError(f"{path}: state dict key {k!r} is not a str")
        if isinstance(v, np.generic):
            v = np.asarray(v)
        if not isinstance(v, np.ndarray):
            raise CheckpointError(
                f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError(f"{path}: contains no tensors")
    check_finite(out, path)
    return out


def check_finite(state_dict, path="checkpoint"):
    """CheckpointError naming the first float tensor holding NaN or Inf (a
    broken file would otherwise surface later as a NaN feature blamed on an
    image).  Attention masks (``*attn_mask``, e.g. in OpenAI's TorchScript
    files) hold -inf by design and may; never NaN.  min/max propagate NaN and
    show Inf without a temporary array."""
    for k, v in state_dict.items():
        if v.dtype.kind == "f" and v.size and not (
                np.isfinite(v.min()) and np.isfinite(v.max())):
            if np.isnan(v).any():
                raise CheckpointError(f"{path}: tensor {k!r} holds NaN values")
            if not k.endswith("attn_mask"):
                raise CheckpointError(f"{path}: tensor {k!r} holds infinite values")


WEIGHTS_SUFFIXES = (".safetensors", ".pkl")   # jclip's own, preferred first


def find_weights(path):
    """``path`` when it is a file; else, for a jclip weights name, the same
    stem in the other jclip format (".safetensors" first); else None.  Lets a
    configuration naming ``X.pkl`` find a newer ``X.safetensors``."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    stem, ext = os.path.splitext(path)
    if ext in WEIGHTS_SUFFIXES:
        for other in WEIGHTS_SUFFIXES:
            if os.path.isfile(stem + other):
                return stem + other
    return None


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
               struct.error, OverflowError, NotImplementedError, KeyError,
               IndexError, UnicodeDecodeError, RuntimeError)


def sniff_format(path):
    """("zip" | "torch-legacy" | "safetensors" | "pickle", size) from the
    first bytes; an empty file, an HTML page or other bytes raise
    CheckpointError.  Cheap: a downloader can reject an error page before
    keeping it."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:   # the central directory sits at the end: catches truncation
            zipfile.ZipFile(path).close()
        except _ZIP_ERRORS as e:
            raise CheckpointError(
                f"{path}: corrupt or truncated zip archive ({str(e)[:200]})") from None
        return "zip", size
    if torch_legacy.is_legacy(head):
        return "torch-legacy", size
    if safetensors_io.looks_like(head, size):
        return "safetensors", size
    if head.startswith(b"\x80"):
        return "pickle", size
    raise CheckpointError(f"{path}: {_describe_junk(head)}")


# The meta every jclip weights file records, and what a converted model's adds
# (the other kinds' own fields: finetune/files.py).  Checked on every read.
WEIGHTS_META = Record({"dtype": Str(choices=["float32", "float16"]), "format": Str(choices=[FORMAT, "jclip"]),
                       "format_version": Int(FORMAT_VERSION, FORMAT_VERSION)}, extra=True)
MODEL_META = Record({"model": Str(max_len=200), "architecture": Str(max_len=200), "source_file": Str(),
                     "source_sha256": Sha256(), "source_format": Str(max_len=64)}, extra=True)


def _parse_meta(raw, path):
    """A stored meta: a dict of str -> str/int under WEIGHTS_META (and
    MODEL_META for a converted model), else CheckpointError naming the key."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: jclip_meta: malformed jclip meta (str -> str/int expected)")
    bad = next((k for k, v in raw.items() if type(v) not in (str, int)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: jclip_meta.{bad}: malformed jclip meta (a {type(raw[bad]).__name__}; "
                              f"str or int expected)")
    try:
        check_value(path, raw, WEIGHTS_META, "jclip_meta")
        if "architecture" in raw:                      # what convert writes
            check_value(path, raw, MODEL_META, "jclip_meta")
    except FileFormatError as e:
        raise CheckpointError(str(e)) from None
    return dict(raw)


def _read_any(path, kind, size):
    """(object holding the state dict, meta) for one sniffed format."""
    meta = {}
    if kind == "zip":
        obj, meta["format"] = torch_reader.read_zip(path)
    elif kind == "torch-legacy":
        obj, meta["format"] = torch_legacy.read_legacy(path), "torch-legacy"
    elif kind == "safetensors":
        obj, stored = safetensors_io.read(path)
        if ST_META_KEY in stored:
            try:
                raw = json.loads(stored[ST_META_KEY])
            except ValueError:
                raise CheckpointError(f"{path}: jclip_meta: malformed jclip meta (not JSON)") from None
            meta.update(_parse_meta(raw, path))
        meta["format"] = "jclip" if ST_META_KEY in stored else "safetensors"
    else:
        with open(path, "rb") as f:
            obj = _pkl.read_pkl(f, size)
        stored = obj.get(META_KEY) if isinstance(obj, dict) else None
        if stored:
            meta.update(_parse_meta(stored, path))
        meta["format"] = "jclip" if stored else "pickle"
    return obj, meta


def read_state_dict(path):
    """Read a checkpoint into (``{name: ndarray}``, meta).

    The format is found from the content, not the extension: a jclip
    safetensors or ``.pkl`` file (or any safetensors / Jittor ``.pkl``), a
    torch zip file (TorchScript archive or plain ``torch.save``) or a legacy
    (pre-1.6) torch file.  A ``{'model': ...}`` or ``{'state_dict': ...}``
    wrapper and ``module.`` prefixes are removed.  meta is the stored jclip
    meta for jclip files, plus ``"format"`` (``"jclip"``, ``"safetensors"``,
    ``"pickle"``, ``"torchscript"``, ``"torch-zip"`` or ``"torch-legacy"``).

    Raises CheckpointError naming the file for anything unreadable, hostile
    or holding NaN/Inf floats.
    """
    path = os.fspath(path)
    kind, size = sniff_format(path)
    try:
        obj, meta = _read_any(path, kind, size)
        return _unwrap(obj, path), meta
    except CheckpointError:
        raise
    except FormatError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: declares more data than memory holds") from None
    except Exception as e:   # noqa: BLE001 - a hostile file must not escape as a raw traceback
        raise CheckpointError(
            f"{path}: unreadable {kind} file ({type(e).__name__}: {str(e)[:200]})") from None


def read_meta(path):
    """The jclip meta of a jclip weights file, or None when the file is
    missing, unreadable or not a jclip file.  A safetensors file's meta is
    read from its header alone; a ``.pkl`` is read whole (its meta is inside
    the pickle)."""
    path = os.fspath(path)
    try:
        kind, _ = sniff_format(path)
        if kind == "safetensors":
            stored = safetensors_io.read_metadata(path)
            if ST_META_KEY not in stored:
                return None
            return dict(_parse_meta(json.loads(stored[ST_META_KEY]), path), format="jclip")
        _, meta = read_state_dict(path)
    except (CheckpointError, FormatError, OSError, ValueError):
        return None
    return meta if meta.get("format") == "jclip" else None


# ------------------------------------------------------------------ writing

def _caster(dtype):
    """cast(name, array): float arrays to ``dtype``, checked to stay finite
    (a float32 value beyond 65504 would become Inf in float16)."""
    dtype = np.dtype(dtype)

    def cast(name, arr):
        if arr.dtype.kind != "f" or arr.dtype == dtype:
            return arr
        out = arr.astype(dtype)
        if out.size and not (np.isfinite(out.min()) and np.isfinite(out.max())) and \
                np.isfinite(arr.min()) and np.isfinite(arr.max()):
            raise ValueError(f"entry {name!r}: values overflow {dtype}")
        return out
    return cast


def save_state_dict(path, state_dict, meta, dtype="float32", fmt=None):
    """Write ``state_dict`` (name -> array) and ``meta`` (str -> str/int) as
    jclip weights; returns the meta written.

    ``fmt`` "safetensors" (the default, except for a path ending in ``.pkl``)
    or "pkl" (Jittor's format, which ``jittor.load`` reads; see
    :func:`format_for_path`).  Floating-point arrays are stored as ``dtype``
    (``"float32"`` or ``"float16"``); integer and bool arrays keep theirs.
    Float arrays must be finite.  The file appears atomically: it is written
    under a temporary name in the same folder and renamed, so a crash or a
    signal never leaves a partial file under ``path``.
    """
    path = os.fspath(path)
    fmt = format_for_path(path, fmt)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    meta = dict(meta, dtype=dtype, format=FORMAT, format_version=FORMAT_VERSION)
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, (str, int)) \
                or isinstance(v, bool):
            raise ValueError(f"meta entry {k!r}: only str -> str/int allowed")
    arrays = OrderedDict()
    for k, v in state_dict.items():
        if k in (META_KEY, ST_META_KEY):
            raise ValueError(f"{k!r} is reserved")
        v = np.asarray(v)
        if v.dtype.hasobject or v.dtype.names is not None:
            raise ValueError(f"entry {k!r}: object or structured arrays cannot be saved")
        arrays[k] = v
    try:
        check_finite(arrays, path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    cast = _caster(dtype)
    with atomic_open(path, fsync=True) as f:
        if fmt == "safetensors":
            # Readable copies of the main fields next to the typed JSON.
            plain = {k: str(meta[k]) for k in ("model", "source_sha256", "architecture")
                     if k in meta}
            safetensors_io.write(f, arrays, {**plain, ST_META_KEY: json.dumps(meta)}, cast)
        else:
            _pkl.write_pkl(f, arrays, meta, cast)
    return meta
