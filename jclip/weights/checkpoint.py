"""Checkpoint files: read any supported checkpoint as numpy, write jclip's.

jclip weights are ``safetensors`` files by default (no code, no pickle; the
``safetensors`` package reads them): tensors plus string metadata, where the
key ``"jclip_meta"`` holds the JSON of jclip's meta (model name, the source
file's SHA-256, dtype...).  A path ending in ``.pkl`` gets Jittor's own format
instead (what ``jittor.save`` writes and ``jittor.load`` reads): a pickled
flat dict ``name -> numpy array`` whose reserved key ``"__jclip_meta__"``
holds the meta, followed by the pickle's SHA-1 and the tag ``HCAJSLHD``.

Reading never executes code from the file and never trusts a size it
declares: ``.pkl`` files go through :mod:`jclip.weights.pkl` (arrays rebuilt
from raw bytes with plain dtypes), torch files through
:mod:`jclip.weights.torch_reader`, safetensors through the package's checked
parser.  Every failure is one :class:`CheckpointError` naming the file (and
the tensor, where there is one); float tensors must be finite.
"""
import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from . import pkl as _pkl
from . import safetensors_io
from . import torch_reader
from .safe_pickle import FormatError
from ..io import atomic_open, sha256_file
from .naming import timm_to_official

META_KEY = "__jclip_meta__"          # the meta's key inside a .pkl
ST_META_KEY = "jclip_meta"           # the meta's key in safetensors metadata
FORMAT = "jclip-weights"
FORMAT_VERSION = 1
FORMATS = ("safetensors", "pkl")     # what save_state_dict writes
_JITTOR_TAG = _pkl.JITTOR_TAG


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
    if torch_reader.is_legacy(head):
        return "torch-legacy", size
    if safetensors_io.looks_like(head, size):
        return "safetensors", size
    if head.startswith(b"\x80"):
        return "pickle", size
    raise CheckpointError(f"{path}: {_describe_junk(head)}")


def _parse_meta(raw, path):
    """A stored meta: a dict of str -> str/int, else CheckpointError."""
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and type(v) in (str, int) for k, v in raw.items()):
        raise CheckpointError(f"{path}: malformed jclip meta (str -> str/int expected)")
    return dict(raw)


def _read_any(path, kind, size):
    """(object holding the state dict, meta) for one sniffed format."""
    meta = {}
    if kind == "zip":
        obj, meta["format"] = torch_reader.read_zip(path)
    elif kind == "torch-legacy":
        obj, meta["format"] = torch_reader.read_legacy(path), "torch-legacy"
    elif kind == "safetensors":
        obj, stored = safetensors_io.read(path)
        if ST_META_KEY in stored:
            try:
                meta.update(_parse_meta(json.loads(stored[ST_META_KEY]), path))
            except ValueError:
                raise CheckpointError(f"{path}: malformed jclip meta (not JSON)") from None
        meta["format"] = "jclip" if ST_META_KEY in stored else "safetensors"
    else:
        with open(path, "rb") as f:
            obj = _pkl.read_pkl(f, size)
        stored = obj.get(META_KEY) if isinstance(obj, dict) else None
        if stored is not None:
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
    missing, unreadable or not a jclip file."""
    try:
        sd, meta = read_state_dict(path)
    except CheckpointError:
        return None
    return meta if meta.get("format") == "jclip" else None


# ------------------------------------------------------------------ writing

class _HashingWriter:
    """Streams the pickle to disk while hashing it (no second copy in RAM)."""

    def __init__(self, f):
        self.f, self.sha1 = f, hashlib.sha1()

    def write(self, b):
        self.sha1.update(b)
        return self.f.write(b)


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


class _CastingPickler(pickle.Pickler):
    """Casts each float array to the output dtype as it is written, so only
    one converted array exists at a time (not a second full state dict)."""

    def __init__(self, file, cast, names):
        super().__init__(file, protocol=4)
        self.cast, self.names = cast, names   # names: id(array) -> key
        # No memo: it would keep every array's bytes alive until the end
        # (a full second copy of the weights); the dict has no cycles.
        self.fast = True

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
            out = self.cast(self.names.get(id(obj), "?"), obj)
            if out is not obj:
                return out.__reduce_ex__(4)
        return NotImplemented


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
            w = _HashingWriter(f)
            names = {id(v): k for k, v in arrays.items()}
            _CastingPickler(w, cast, names).dump(OrderedDict([(META_KEY, meta), *arrays.items()]))
            f.write(w.sha1.digest() + _JITTOR_TAG)
    return meta


# ------------------------------------------------------- architectures

def detect_architecture(state_dict, path="checkpoint"):
    """"clip" or "convnextv2"; anything else is a CheckpointError."""
    keys = state_dict.keys()
    if "token_embedding.weight" in keys and any(k.startswith("visual.")
                                                for k in keys):
        return "clip"
    if any(k.startswith("downsample_layers.") for k in keys) or (
            any(k.startswith("stem.") for k in keys)
            and any(k.startswith("stages.0.blocks.") for k in keys)):
        return "convnextv2"
    sample = ", ".join(list(keys)[:5])
    raise CheckpointError(
        f"{path}: unknown architecture (neither CLIP nor ConvNeXt-V2; "
        f"keys start {sample})")


def _shape_checker(state_dict, path):
    def expect(key, *shape):
        if key not in state_dict:
            raise CheckpointError(f"{path}: missing tensor {key!r}")
        got = tuple(state_dict[key].shape)
        if len(got) != len(shape) or any(s is not None and s != g
                                         for s, g in zip(shape, got)):
            want = "(" + ", ".join("*" if s is None else str(s)
                                   for s in shape) + ")"
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {got}, expected {want}")
        return got
    return expect


def _check_resblocks(state_dict, expect, prefix, width):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.attn\.in_proj_weight$")
    for k in state_dict:
        m = pat.match(k)
        if m:
            i = m.group(1)
            expect(k, 3 * width, width)
            expect(f"{prefix}{i}.mlp.c_fc.weight", None, width)
            expect(f"{prefix}{i}.mlp.c_proj.weight", width, None)


def validate_clip(state_dict, path="checkpoint"):
    """Cheap consistency checks of an OpenAI CLIP state dict (the model
    loader does the full ones)."""
    expect = _shape_checker(state_dict, path)
    (width,) = expect("ln_final.weight", None)
    expect("token_embedding.weight", None, width)
    expect("positional_embedding", None, width)
    _, embed = expect("text_projection", width, None)
    if state_dict.get("logit_scale") is None or \
            state_dict["logit_scale"].size != 1:
        raise CheckpointError(f"{path}: 'logit_scale' must be one number")
    _check_resblocks(state_dict, expect, "transformer.resblocks.", width)
    if "visual.proj" in state_dict:   # ViT
        vw = expect("visual.conv1.weight", None, 3, None, None)[0]
        expect("visual.class_embedding", vw)
        expect("visual.positional_embedding", None, vw)
        expect("visual.proj", vw, embed)
        _check_resblocks(state_dict, expect, "visual.transformer.resblocks.",
                         vw)
    else:                              # ModifiedResNet
        expect("visual.conv1.weight", None, 3, 3, 3)
        expect("visual.attnpool.c_proj.weight", embed, None)


def validate_convnextv2(state_dict, path="checkpoint"):
    """Cheap consistency checks of an official-named ConvNeXt-V2 state
    dict."""
    expect = _shape_checker(state_dict, path)
    dims = [expect("downsample_layers.0.0.weight", None, 3, 4, 4)[0]]
    for s in range(1, 4):
        dims.append(expect(f"downsample_layers.{s}.1.weight",
                           None, dims[-1], 2, 2)[0])
    for k in state_dict:
        m = re.match(r"stages\.([0-3])\.(\d+)\.dwconv\.weight$", k)
        if m:
            s, b = int(m.group(1)), m.group(2)
            c = dims[s]
            pre = f"stages.{s}.{b}."
            expect(k, c, 1, 7, 7)
            expect(pre + "pwconv1.weight", 4 * c, c)
            expect(pre + "grn.gamma", 1, 1, 1, 4 * c)
            expect(pre + "pwconv2.weight", c, 4 * c)
    if "head.weight" in state_dict:
        expect("head.weight", None, dims[3])


def to_official(state_dict, arch):
    """ConvNeXt-V2 timm names -> official names (other input unchanged)."""
    if arch != "convnextv2" or not any(
            k.startswith("stem.") or ".blocks." in k for k in state_dict):
        return state_dict
    return timm_to_official(state_dict)


def prepare_state_dict(state_dict, path="checkpoint"):
    """(architecture, official-named state dict) after validation."""
    arch = detect_architecture(state_dict, path)
    state_dict = to_official(state_dict, arch)
    (validate_clip if arch == "clip" else validate_convnextv2)(state_dict,
                                                               path)
    return arch, state_dict


# ------------------------------------------------------- conversion

def is_up_to_date(out, source_sha256, dtype="float32", fmt=None):
    """True when ``out`` is a readable jclip file converted from a source
    with this SHA-256, in this dtype, by this format version, in the format
    ``fmt`` (default: the one :func:`format_for_path` gives ``out``)."""
    meta = read_meta(out) if os.path.isfile(out) else None
    want = "safetensors" if format_for_path(out, fmt) == "safetensors" else "pickle"
    return bool(meta) and meta.get("source_sha256") == source_sha256 and \
        meta.get("dtype") == dtype and \
        meta.get("format_version") == FORMAT_VERSION and \
        sniff_format(out)[0] == want


def convert_checkpoint(src, out, model=None, dtype="float32",
                       source_sha256=None, fmt=None):
    """Convert the checkpoint ``src`` into the jclip file ``out``; returns the
    meta written.  ``model`` names the model in the meta (default: the source
    file's stem, or the model recorded in a jclip source); ``fmt`` as for
    :func:`save_state_dict`.  On any error (unreadable, hostile, NaN/Inf,
    unknown architecture) nothing is left at ``out``."""
    src, out = os.fspath(src), os.fspath(out)
    sha = source_sha256 or sha256_file(src)
    state_dict, src_meta = read_state_dict(src)
    arch, state_dict = prepare_state_dict(state_dict, src)
    meta = {
        "model": model or src_meta.get("model")
        or os.path.splitext(os.path.basename(src))[0],
        "architecture": arch,
        "source_file": os.path.basename(src),
        "source_sha256": sha,
        "source_format": src_meta["format"],
    }
    try:
        return save_state_dict(out, state_dict, meta, dtype=dtype, fmt=fmt)
    except ValueError as e:   # e.g. a value overflowing float16
        raise CheckpointError(f"{src}: {e}") from None
