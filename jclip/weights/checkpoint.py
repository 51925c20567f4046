"""Checkpoint files: read any supported checkpoint as numpy, write jclip's.

jclip weights are Jittor's own ``.pkl`` format (what ``jittor.save`` writes
and ``jittor.load`` reads): a pickled flat dict ``name -> numpy array``
followed by the pickle's SHA-1 and the tag ``HCAJSLHD``.  One reserved key,
``"__jclip_meta__"``, holds a dict of plain str/int values (model name, the
source file's SHA-256, dtype...).

Reading never executes code from the file: ``.pkl`` files go through an
unpickler that resolves only numpy's array-rebuilding globals, and torch
files through :mod:`jclip.torch_reader`.
"""
import hashlib
import os
import pickle
import re
import zipfile
from collections import OrderedDict

import numpy as np

from . import torch_reader
from ..io import atomic_open, sha256_file
from .naming import timm_to_official

META_KEY = "__jclip_meta__"
FORMAT = "jclip-weights"
FORMAT_VERSION = 1
_JITTOR_TAG = b"HCAJSLHD"   # jittor.save's trailer: sha1(pickle) + tag
_TRAILER = 20 + len(_JITTOR_TAG)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file."""



# ------------------------------------------------------------------ reading

_NUMPY_GLOBALS = {
    (mod, name): None
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
}
_NUMPY_GLOBALS.update({(mod, "_frombuffer"): None
                       for mod in ("numpy.core.numeric", "numpy._core.numeric")})
_NUMPY_GLOBALS.update({("numpy", "ndarray"): None, ("numpy", "dtype"): None})


class _ArrayUnpickler(pickle.Unpickler):
    """Plain containers, scalars and numpy arrays; every other global is
    refused before it is even imported."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}' (jclip weights hold "
            "only containers and numpy arrays)")


def _check_plain(obj, where="the file"):
    """Reject anything but containers, scalars and non-object arrays (an
    object array could smuggle arbitrary objects)."""
    if isinstance(obj, np.ndarray) or isinstance(obj, np.generic):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"object array in {where}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"entry {k!r}")
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, where)
    elif not (obj is None or isinstance(obj, (str, bytes, int, float, bool))):
        raise pickle.UnpicklingError(
            f"unexpected {type(obj).__name__} in {where}")


def _read_pkl(path, size):
    with open(path, "rb") as f:
        if size >= _TRAILER:
            f.seek(size - len(_JITTOR_TAG))
            if f.read() == _JITTOR_TAG:
                # jittor.save's checksum: catches truncation and corruption.
                f.seek(size - _TRAILER)
                digest = f.read(20)
                f.seek(0)
                h, left = hashlib.sha1(), size - _TRAILER
                while left:
                    block = f.read(min(left, 1 << 20))
                    h.update(block)
                    left -= len(block)
                if h.digest() != digest:
                    raise CheckpointError(
                        f"{path}: checksum mismatch, the file is corrupt or "
                        "truncated; delete it and convert again")
        f.seek(0)
        try:
            obj = _ArrayUnpickler(f).load()
            _check_plain(obj)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: unsafe or invalid pickle: {e}") \
                from None
        except (EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, ImportError, MemoryError,
                UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None
    return obj


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
    return out


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


def sniff_format(path):
    """("zip" | "torch-legacy" | "pickle", size) from the first bytes; an
    empty file, an HTML page or other bytes raise CheckpointError.  Cheap: a
    downloader can reject an error page before keeping it."""
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
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(
                f"{path}: corrupt or truncated zip archive ({e})") from None
        return "zip", size
    if torch_reader.is_legacy(head):
        return "torch-legacy", size
    if head.startswith(b"\x80"):
        return "pickle", size
    raise CheckpointError(f"{path}: {_describe_junk(head)}")


def read_state_dict(path):
    """Read a checkpoint into (``{name: ndarray}``, meta).

    The format is found from the content, not the extension: a jclip/Jittor
    ``.pkl``, a torch zip file (TorchScript archive or plain ``torch.save``)
    or a legacy (pre-1.6) torch file.  A ``{'model': ...}`` or
    ``{'state_dict': ...}`` wrapper and ``module.`` prefixes are removed.
    meta is the stored ``__jclip_meta__`` for jclip files, plus ``"format"``
    (``"jclip"``, ``"pickle"``, ``"torchscript"``, ``"torch-zip"`` or
    ``"torch-legacy"``).  Raises CheckpointError naming the file.
    """
    path = os.fspath(path)
    kind, size = sniff_format(path)
    meta = {}
    try:
        if kind == "zip":
            obj, meta["format"] = torch_reader.read_zip(path)
        elif kind == "torch-legacy":
            obj, meta["format"] = torch_reader.read_legacy(path), "torch-legacy"
        else:
            obj = _read_pkl(path, size)
            stored = obj.get(META_KEY) if isinstance(obj, dict) else None
            if isinstance(stored, dict):
                meta.update(stored)
            meta["format"] = "jclip" if stored else "pickle"
    except torch_reader.TorchFormatError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    return _unwrap(obj, path), meta


def read_meta(path):
    """The ``__jclip_meta__`` of a jclip weights file, or None when the file
    is missing, unreadable or not a jclip file."""
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


class _CastingPickler(pickle.Pickler):
    """Casts each float array to the output dtype as it is written, so only
    one converted array exists at a time (not a second full state dict)."""

    def __init__(self, file, dtype):
        super().__init__(file, protocol=4)
        self.dtype = np.dtype(dtype)
        # No memo: it would keep every array's bytes alive until the end
        # (a full second copy of the weights); the dict has no cycles.
        self.fast = True

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype.kind == "f" and \
                obj.dtype != self.dtype:
            return obj.astype(self.dtype).__reduce_ex__(4)
        return NotImplemented


def save_state_dict(path, state_dict, meta, dtype="float32"):
    """Write ``state_dict`` (name -> array) and ``meta`` (str -> str/int) as
    a jclip ``.pkl`` that ``jittor.load`` reads.

    Floating-point arrays are stored as ``dtype`` (``"float32"`` or
    ``"float16"``); integer and bool arrays keep theirs.  The file appears
    atomically: it is written under a temporary name in the same folder and
    renamed, so a crash never leaves a partial file under ``path``.
    """
    path = os.fspath(path)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    meta = dict(meta, dtype=dtype, format=FORMAT, format_version=FORMAT_VERSION)
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, (str, int)) \
                or isinstance(v, bool):
            raise ValueError(f"meta entry {k!r}: only str -> str/int allowed")
    out = OrderedDict([(META_KEY, meta)])
    for k, v in state_dict.items():
        if k == META_KEY:
            raise ValueError(f"{META_KEY!r} is reserved")
        v = np.asarray(v)
        if v.dtype.hasobject:
            raise ValueError(f"entry {k!r}: object arrays cannot be saved")
        out[k] = v

    with atomic_open(path, fsync=True) as f:
        w = _HashingWriter(f)
        _CastingPickler(w, dtype).dump(out)
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

def is_up_to_date(out, source_sha256, dtype="float32"):
    """True when ``out`` is a readable jclip file converted from a source
    with this SHA-256, in this dtype, by this format version."""
    meta = read_meta(out) if os.path.isfile(out) else None
    return bool(meta) and meta.get("source_sha256") == source_sha256 and \
        meta.get("dtype") == dtype and \
        meta.get("format_version") == FORMAT_VERSION


def convert_checkpoint(src, out, model=None, dtype="float32",
                       source_sha256=None):
    """Convert the checkpoint ``src`` into the jclip file ``out``; returns the
    meta written.  ``model`` names the model in the meta (default: the source
    file's stem, or the model recorded in a jclip source).  On any error nothing is left at ``out``."""
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
    return save_state_dict(out, state_dict, meta, dtype=dtype)
