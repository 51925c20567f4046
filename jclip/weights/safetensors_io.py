"""safetensors files: jclip's default weights format (no code, no pickle).

Reading goes through the ``safetensors`` package's numpy API
(``safe_open(..., framework="np")``), whose parser checks the header (size,
dtypes, shapes, offsets that tile the data exactly) before any tensor is
touched.  Writing streams the documented layout (8-byte little-endian header
length, JSON header padded to 8 bytes, raw little-endian tensor bytes) one
tensor at a time, so a float16 -> float32 conversion never holds a second
copy of the whole state dict; tests check the package reads it back exactly.

No Jittor, no torch.
"""
import hashlib
import json
import struct
from collections import OrderedDict

import numpy as np

from .safe_pickle import FormatError

ST_META_KEY = "jclip_meta"           # jclip's meta (JSON) in the file's metadata
MAGIC_MAX_HEADER = 100 << 20   # the package's own limit on the header size
# SHA-256 of the data section, in the metadata of files jclip writes: the
# format has no checksum of its own, and a flipped bit would load silently.
DATA_SHA_KEY = "jclip_data_sha256"
_PLACEHOLDER = "0" * 64
_TO_ST = {"bool": "BOOL", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",
          "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64",
          "float16": "F16", "float32": "F32", "float64": "F64"}


def looks_like(head, size):
    """True when the first bytes ``head`` (>= 9 of them) of a ``size``-byte
    file start like a safetensors file: a header length that fits, then '{'."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= min(size - 8, MAGIC_MAX_HEADER)


def write(f, arrays, metadata, cast=None):
    """Stream ``arrays`` (name -> ndarray, in order) and ``metadata`` (str ->
    str) to the seekable binary file ``f``; ``cast(name, array)``, when given,
    returns the array to store (called once per tensor, just before it is
    written).  The data's SHA-256 is hashed while streaming and patched into
    the header's metadata afterwards (same length, so nothing moves)."""
    header, offset, order = OrderedDict(), 0, []
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[DATA_SHA_KEY] = _PLACEHOLDER
    header["__metadata__"] = meta
    for name, arr in arrays.items():
        dt, shape = _stored_dtype(name, arr, cast)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _TO_ST[dt.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        order.append(name)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    start = f.tell()
    f.write(struct.pack("<Q", len(text)) + text)
    h = hashlib.sha256()
    for name in order:
        arr = np.asarray(arrays[name])
        if cast is not None:
            arr = cast(name, arr)
        arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
        block = memoryview(arr.reshape(-1)).cast("B")
        h.update(block)
        f.write(block)
    end = f.tell()
    at = text.index(f'"{DATA_SHA_KEY}":"{_PLACEHOLDER}"'.encode()) + len(DATA_SHA_KEY) + 4
    f.seek(start + 8 + at)
    f.write(h.hexdigest().encode())
    f.seek(end)


def _stored_dtype(name, arr, cast):
    """(dtype, shape) a tensor will be stored with, without casting it yet."""
    arr = np.asarray(arr)
    dt = arr.dtype
    if cast is not None:
        dt = cast(name, np.empty((0,), dt)).dtype
    if dt.name not in _TO_ST:
        raise ValueError(f"entry {name!r}: dtype {dt} cannot be stored in safetensors")
    return dt, arr.shape


def read(path):
    """``(OrderedDict name -> ndarray, metadata dict)`` of a safetensors file,
    tensors in the order of their data.  Raises FormatError (no file name:
    the caller adds it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as st:
            metadata = st.metadata() or {}
            out = OrderedDict((n, st.get_tensor(n)) for n in st.keys())
    except SafetensorError as e:
        raise FormatError(f"invalid safetensors file ({str(e)[:200]})") from None
    except (TypeError, ValueError, KeyError, OverflowError, MemoryError) as e:
        raise FormatError(f"unreadable safetensors file ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None
    order = _check_data(path, metadata.get(DATA_SHA_KEY))
    if sorted(order) == sorted(out):
        out = OrderedDict((n, out[n]) for n in order)
    return out, dict(metadata)


def _check_data(path, want_sha):
    """Tensor names in header order (the order written; safe_open lists them
    sorted), after checking the data's SHA-256 when the file records one.
    The header was validated by safe_open already."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        if want_sha is not None:
            h = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            if h.hexdigest() != want_sha:
                raise FormatError("checksum mismatch, the file is corrupt; delete it "
                                  "and convert again")
    return [k for k in header if k != "__metadata__"]


def read_metadata(path):
    """The metadata dict of a safetensors file from its header alone (no
    tensor read, nothing hashed); FormatError for a malformed header."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = f.seek(0, 2)
        if not looks_like(head, size):
            raise FormatError("not a safetensors file")
        (n,) = struct.unpack("<Q", head[:8])
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise FormatError("malformed safetensors header (not JSON)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FormatError("malformed safetensors metadata (str -> str expected)")
    return meta
