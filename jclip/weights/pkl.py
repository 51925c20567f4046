"""Jittor ``.pkl`` weights: read without trusting them, and written.

What ``jittor.save`` writes is ``pickle.dumps(obj, 4)``, then the pickle's
SHA-1 and the tag ``HCAJSLHD``.  A plain unpickler would run any code the file
names; even numpy's own ``_reconstruct`` and ``dtype`` are unsafe (a forged
structured dtype with an object field makes the first cast dereference file
bytes as a pointer).  So here numpy's globals resolve to inert stand-ins that
only *record* their arguments; every array is rebuilt afterwards from raw
bytes with a plain numeric dtype from a fixed list.  Structured, object,
subarray and unaligned dtypes, and anything else, are refused.

Writing (:func:`write_pkl`) produces what ``jittor.load`` reads: the
pickled flat dict ``name -> array`` whose reserved key ``META_KEY`` holds
jclip's meta, then the SHA-1 trailer.

No Jittor, no torch.
"""
import hashlib
import math
import pickle
from collections import OrderedDict

import numpy as np

from .safe_pickle import Budget, FormatError, check_shape, guarded_load

META_KEY = "__jclip_meta__"          # the meta's key inside a .pkl
JITTOR_TAG = b"HCAJSLHD"   # jittor.save's trailer: sha1(pickle) + tag
TRAILER = 20 + len(JITTOR_TAG)

# The only dtypes an array may have (numpy's pickled type codes).
PLAIN_DTYPES = frozenset(("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
                          "f2", "f4", "f8"))


class _DType:
    """Stand-in for ``numpy.dtype(code, align, copy)`` plus its pickled state."""
    byteorder = "="
    code = None

    def __init__(self, code=None, align=False, copy=True):
        if not isinstance(code, str) or code not in PLAIN_DTYPES:
            raise FormatError(f"refusing dtype {_name(code)} (only plain numeric dtypes)")
        if align is not False:
            raise FormatError("refusing an aligned (structured) dtype")
        self.code = code

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields,
        # elsize, alignment, flags); a plain dtype has no subarray, names or
        # fields and elsize/alignment -1.
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)):
            raise FormatError("refusing a dtype with an unknown state layout")
        _v, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        if subarray is not None or names is not None or fields is not None:
            raise FormatError("refusing a structured or subarray dtype")
        if elsize != -1 or alignment != -1 or flags != 0 or order not in ("<", ">", "|", "="):
            raise FormatError("refusing a dtype with custom size, alignment or flags")
        self.byteorder = order

    def to_numpy(self):
        if self.code is None:
            raise FormatError("dtype without a type code")
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class _NDArrayMarker:
    """Stand-in for the class ``numpy.ndarray`` (only ever an argument)."""


_NDARRAY = _NDArrayMarker()


class _ArrayStub:
    """What ``_reconstruct(ndarray, (0,), b'b')`` + BUILD(state) describe."""
    state = None

    def __setstate__(self, state):
        self.state = state


def _reconstruct(cls, shape=None, typecode=None):
    if cls is not _NDARRAY:
        raise FormatError("_reconstruct of something other than numpy.ndarray")
    return _ArrayStub()


class _FromBuffer:
    """Stand-in for protocol 5's ``_frombuffer(buf, dtype, shape, order)``."""

    def __init__(self, buf=None, dtype=None, shape=None, order="C"):
        self.args = (buf, dtype, shape, order)


class _Scalar:
    """Stand-in for ``numpy.core.multiarray.scalar(dtype, raw)``."""

    def __init__(self, dtype=None, raw=None):
        self.args = (dtype, raw)


_GLOBALS = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _DType,
            ("collections", "OrderedDict"): OrderedDict}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    _GLOBALS[(_mod, "scalar")] = _Scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _GLOBALS[(_mod, "_frombuffer")] = _FromBuffer


class _Unpickler(pickle.Unpickler):
    """Containers, scalars and the stand-ins above; every other global is
    refused before it is even imported."""

    def find_class(self, module, name):
        found = _GLOBALS.get((module, name))
        if found is None:
            raise FormatError(
                f"refusing to load global '{str(module)[:60]}.{str(name)[:60]}' (jclip "
                "weights hold only containers and numpy arrays)")
        return found

    def persistent_load(self, pid):
        raise FormatError("unexpected persistent id")


def _array(dtype, raw, shape, fortran, budget, where):
    """A fresh writable array rebuilt from raw bytes, after every check."""
    if not isinstance(dtype, _DType):
        raise FormatError(f"{where}: array without a plain dtype")
    dt = dtype.to_numpy()
    if not isinstance(raw, (bytes, bytearray)):
        raise FormatError(f"{where}: array data is a {type(raw).__name__}, not bytes")
    shape = check_shape(shape, where)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes != len(raw):
        raise FormatError(f"{where}: shape {shape} of {dt} needs {nbytes} bytes, "
                          f"the file holds {len(raw)}")
    if type(fortran) is not bool:
        raise FormatError(f"{where}: malformed array order flag")
    # Each array's bytes come from the file once; a memo reference repeated
    # a million times would otherwise multiply them.
    budget.take(nbytes, where)
    arr = np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")
    return arr.copy(order="K")


def _build(obj, budget, where="the file", memo=None):
    """The stand-ins in ``obj`` replaced by checked numpy values; only plain
    containers, str/bytes/numbers/None pass.  Depth was bounded already."""
    if memo is None:
        memo = {}
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _ArrayStub):
        st = obj.state
        if not (isinstance(st, tuple) and len(st) in (4, 5)):
            raise FormatError(f"{where}: malformed array record")
        shape, dtype, fortran, raw = st[-4:]
        out = _array(dtype, raw, shape, fortran, budget, where)
    elif isinstance(obj, _FromBuffer):
        buf, dtype, shape, order = obj.args
        if order not in ("C", "F"):
            raise FormatError(f"{where}: malformed array order")
        out = _array(dtype, buf, shape, order == "F", budget, where)
    elif isinstance(obj, _Scalar):
        dtype, raw = obj.args
        out = _array(dtype, raw, (), False, budget, where)[()]
    elif isinstance(obj, dict):
        out = type(obj)() if type(obj) in (dict, OrderedDict) else None
        if out is None:
            raise FormatError(f"{where}: unexpected {type(obj).__name__}")
        memo[id(obj)] = out
        for k, v in obj.items():
            key = _build(k, budget, where, memo)
            out[key] = _build(v, budget, f"entry {_name(key)}", memo)
        return out
    elif type(obj) in (list, tuple):
        out = type(obj)(_build(v, budget, where, memo) for v in obj)
    elif obj is None or type(obj) in (str, bytes, int, float, bool):
        out = obj
    else:
        raise FormatError(f"unexpected {type(obj).__name__} in {where}")
    memo[id(obj)] = out
    return out


def _verify_trailer(f, size):
    """jittor.save's SHA-1 trailer, when present: catches truncation and
    corruption.  Returns the pickle's end offset."""
    if size < TRAILER:
        return size
    f.seek(size - len(JITTOR_TAG))
    if f.read() != JITTOR_TAG:
        return size
    f.seek(size - TRAILER)
    digest = f.read(20)
    f.seek(0)
    h, left = hashlib.sha1(), size - TRAILER
    while left:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        h.update(block)
        left -= len(block)
    if h.digest() != digest:
        raise FormatError("checksum mismatch, the file is corrupt or truncated; "
                          "delete it and convert again")
    return size - TRAILER


def read_pkl(f, size):
    """The object in a jclip/Jittor ``.pkl`` (open binary file ``f`` of
    ``size`` bytes), numpy arrays rebuilt safely.  Raises FormatError."""
    end = _verify_trailer(f, size)
    f.seek(0)
    obj = guarded_load(_Unpickler(f), f, end)
    return _build(obj, Budget(size, factor=1))


def _name(value):
    text = repr(value) if isinstance(value, (str, int, bytes)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


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


def write_pkl(f, arrays, meta, cast):
    """Write ``arrays`` (name -> ndarray, in order) and ``meta`` to the binary
    file ``f`` as jittor.save does; ``cast(name, array)`` gives the array to
    store (called as each one is written)."""
    w = _HashingWriter(f)
    names = {id(v): k for k, v in arrays.items()}
    _CastingPickler(w, cast, names).dump(OrderedDict([(META_KEY, meta), *arrays.items()]))
    f.write(w.sha1.digest() + JITTOR_TAG)
