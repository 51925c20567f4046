"""One schema per kind of file jclip writes, one reader, one error.

Every file jclip reads back (head files, the dog head, fine-tuned CLIP, the
features cache, extract's index and shard records, the manifest, tuned
configurations, weights meta) is checked against a declared schema before
any of its values is used: which keys exist, their types and ranges, every
array's name, dtype, shape (in symbols shared between arrays and header
values) and finiteness.  A file that breaks its schema raises
``FileFormatError`` naming the file and the key, never a KeyError, a
TypeError or an allocation of what a forged header claims.

    HEADER = Record({"version": Int(1, 1), "dim": Int(1), "sha256": Sha256()})
    header = read_json(path, HEADER)                       # bounded size and depth
    arrays = check_arrays(path, arrays, {"w": Array("f", ("C", "dim"))}, bind=header)

Reads are bounded: JSON by size (``max_bytes``) and nesting depth (checked
before the parser runs, so a deep document cannot exhaust the stack), .npy
and .npz members by comparing the shape their header claims with the bytes
the file holds before anything is allocated.
"""
import json
import math
import os
import re
import zipfile
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .json_depth import json_depth

MAX_JSON_BYTES = 64 << 20      # a header, index or manifest: far below this
MAX_JSON_DEPTH = 64


class FileFormatError(ValueError):
    """A file that is not what its kind's schema says: ``path``, ``key`` (a
    dotted path into the file, or '' for the file as a whole), ``problem``."""

    def __init__(self, path: str, key: str, problem: str):
        self.path, self.key, self.problem = os.fspath(path), key, problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class _Bad(Exception):
    """Raised inside a check; becomes a FileFormatError with the file's name."""

    def __init__(self, key: str, problem: str):
        super().__init__(key, problem)
        self.key, self.problem = key, problem


def _join(where: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


# --------------------------------------------------------------------------
# JSON value specs: each has check(value, where) -> value (or raises _Bad)
# --------------------------------------------------------------------------

class Spec:
    def check(self, value, where: str):
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.lower()


def _type_name(v) -> str:
    return "null" if v is None else {dict: "object", list: "list", str: "text", bool: "true/false"}.get(
        type(v), type(v).__name__)


class Any_(Spec):
    """Any JSON value (the document is already size- and depth-bounded)."""

    def check(self, value, where):
        return value


class FiniteJson(Spec):
    """Any JSON value holding no infinite number (1e999 parses to inf)."""

    def check(self, value, where):
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(where, f"{value} is not finite")
        if isinstance(value, list):
            return [self.check(v, _join(where, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.check(v, _join(where, k)) for k, v in value.items()}
        return value


class Int(Spec):
    """An integer (not a bool) in [lo, hi]."""

    def __init__(self, lo: Optional[int] = None, hi: Optional[int] = None):
        self.lo, self.hi = lo, hi

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(where, f"expected an integer, found {_type_name(value)}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Bad(where, f"{value} is outside [{self.lo}, {self.hi}]")
        return value

    def describe(self):
        return f"integer in [{self.lo}, {self.hi}]"


class Float(Spec):
    """A finite number (ints accepted) in [lo, hi]."""

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None):
        self.lo, self.hi = lo, hi

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(where, f"expected a number, found {_type_name(value)}")
        if not math.isfinite(value):
            raise _Bad(where, f"{value} is not finite")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _Bad(where, f"{value} is outside [{self.lo}, {self.hi}]")
        return value

    def describe(self):
        return "finite number"


class Bool(Spec):
    def check(self, value, where):
        if not isinstance(value, bool):
            raise _Bad(where, f"expected true/false, found {_type_name(value)}")
        return value


class Str(Spec):
    """Text, optionally one of ``choices`` or matching ``pattern`` (whole)."""

    def __init__(self, choices: Optional[Iterable[str]] = None, pattern: Optional[str] = None,
                 max_len: int = 1 << 16):
        self.choices = tuple(choices) if choices is not None else None
        self.pattern = re.compile(pattern) if pattern else None
        self.max_len = max_len

    def check(self, value, where):
        if not isinstance(value, str):
            raise _Bad(where, f"expected text, found {_type_name(value)}")
        if len(value) > self.max_len:
            raise _Bad(where, f"text of {len(value)} characters (at most {self.max_len})")
        if self.choices is not None and value not in self.choices:
            raise _Bad(where, f"{value[:60]!r} is not one of {', '.join(self.choices)}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Bad(where, f"{value[:60]!r} is not a valid value")
        return value


def Sha256() -> Str:
    """64 lower-case hex digits."""
    return Str(pattern=r"[0-9a-f]{64}")


class Null(Spec):
    def check(self, value, where):
        if value is not None:
            raise _Bad(where, f"expected null, found {_type_name(value)}")
        return value


class OneOf(Spec):
    """The first of ``specs`` that accepts the value."""

    def __init__(self, *specs: Spec):
        self.specs = specs

    def check(self, value, where):
        problems = []
        for s in self.specs:
            try:
                return s.check(value, where)
            except _Bad as e:
                problems.append(e.problem)
        raise _Bad(where, " or ".join(dict.fromkeys(problems)))


def Maybe(spec: Spec) -> OneOf:
    """``spec`` or null."""
    return OneOf(Null(), spec)


class ListOf(Spec):
    def __init__(self, item: Spec, min_len: int = 0, max_len: Optional[int] = None):
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def check(self, value, where):
        if not isinstance(value, list):
            raise _Bad(where, f"expected a list, found {_type_name(value)}")
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise _Bad(where, f"a list of {len(value)} items (expected {self.min_len}.."
                              f"{'' if self.max_len is None else self.max_len})")
        return [self.item.check(v, _join(where, i)) for i, v in enumerate(value)]


class DictOf(Spec):
    """An object whose keys match ``key`` (a Str spec) and values ``value``."""

    def __init__(self, value: Spec, key: Optional[Str] = None, max_len: Optional[int] = None):
        self.value, self.key, self.max_len = value, key or Str(), max_len

    def check(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, found {_type_name(value)}")
        if self.max_len is not None and len(value) > self.max_len:
            raise _Bad(where, f"{len(value)} entries (at most {self.max_len})")
        out = {}
        for k, v in value.items():
            self.key.check(k, _join(where, k))
            out[k] = self.value.check(v, _join(where, k))
        return out


class Record(Spec):
    """An object with named fields: every field of ``fields`` is required
    unless listed in ``optional``; unknown keys are refused unless ``extra``."""

    def __init__(self, fields: Mapping[str, Spec], optional: Iterable[str] = (), extra: bool = False):
        self.fields, self.optional, self.extra = dict(fields), frozenset(optional), extra

    def check(self, value, where):
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, found {_type_name(value)}")
        out = {}
        for k, spec in self.fields.items():
            if k not in value:
                if k in self.optional:
                    continue
                raise _Bad(_join(where, k), "missing")
            out[k] = spec.check(value[k], _join(where, k))
        unknown = [k for k in value if k not in self.fields]
        if unknown and not self.extra:
            raise _Bad(_join(where, unknown[0]), "not a key this file kind has")
        for k in unknown:
            out[k] = value[k]
        return out


def check_value(path: str, value, spec: Spec, key: str = ""):
    """``spec.check(value)``, failures as FileFormatError naming ``path``."""
    try:
        return spec.check(value, key)
    except _Bad as e:
        raise FileFormatError(path, e.key, e.problem) from None


# --------------------------------------------------------------------------
# Bounded JSON
# --------------------------------------------------------------------------

def loads_bounded(data: Union[bytes, str], what: str, max_bytes: int = MAX_JSON_BYTES,
                  max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` of untrusted text (a file or a server's answer), refused
    (FileFormatError naming ``what``) when over ``max_bytes`` or nested deeper
    than ``max_depth``, or not JSON.  NaN/Infinity are refused too."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise FileFormatError(what, "", f"{len(data)} bytes of JSON (at most {max_bytes})")
    depth = json_depth(data)
    if depth > max_depth:
        raise FileFormatError(what, "", f"JSON nested {depth} deep (at most {max_depth})")

    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise FileFormatError(what, "", f"not valid JSON ({e})") from None


def read_json(path: str, spec: Optional[Spec] = None, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH):
    """A JSON file read (bounded) and checked against ``spec``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise FileFormatError(path, "", f"cannot read ({e.strerror or e})") from None
    value = loads_bounded(data, path, max_bytes, max_depth)
    return value if spec is None else check_value(path, value, spec)


# --------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------

_KINDS = {"f": "floating point", "i": "integer", "u": "unsigned integer", "b": "boolean",
          "U": "text", "S": "bytes"}
Dim = Union[int, str]


class Array:
    """An array's declared dtype and shape.

    dtype: a kind letter ('f' float, 'i' int, 'b' bool, 'U' text, 'iu' either
    integer kind) or a tuple of exact dtype names; shape: a tuple of ints
    and symbols (a symbol takes the same value wherever it appears, in any
    array of the file and in ``bind``); finite: floats hold no NaN/inf."""

    def __init__(self, dtype: Union[str, Tuple[str, ...]] = "f", shape: Optional[Sequence[Dim]] = None,
                 finite: bool = True):
        self.dtype = dtype
        self.shape = None if shape is None else tuple(shape)
        self.finite = finite

    def check_dtype(self, dt: np.dtype, key: str) -> None:
        if dt.hasobject or dt.fields is not None:
            raise _Bad(key, f"dtype {dt} is not a plain array")
        if isinstance(self.dtype, tuple):
            if dt.name not in self.dtype:
                raise _Bad(key, f"dtype {dt.name}, expected {' or '.join(self.dtype)}")
        elif dt.kind not in self.dtype:
            raise _Bad(key, f"dtype {dt.name}, expected {' or '.join(_KINDS[k] for k in self.dtype)}")

    def check_shape(self, shape: Tuple[int, ...], key: str, bound: Dict[str, int]) -> None:
        if self.shape is None:
            return
        if len(shape) != len(self.shape):
            raise _Bad(key, f"shape {shape}, expected {len(self.shape)} dimensions {self.shape}")
        for got, want in zip(shape, self.shape):
            if isinstance(want, int):
                if got != want:
                    raise _Bad(key, f"shape {shape}, expected {self.shape}")
            elif want in bound and bound[want] != got:
                raise _Bad(key, f"shape {shape}: {want} is {got} here but {bound[want]} elsewhere")
            else:
                bound[want] = got


def check_arrays(path: str, arrays: Mapping[str, np.ndarray], specs: Mapping[str, Array],
                 bind: Optional[Mapping[str, int]] = None, extra: bool = False) -> Dict[str, int]:
    """Check loaded ``arrays`` against ``specs`` (every spec required; names
    not in ``specs`` refused unless ``extra``).  Returns the bound symbols."""
    bound = {k: int(v) for k, v in (bind or {}).items()}
    try:
        for name, spec in specs.items():
            if name not in arrays:
                raise _Bad(name, "missing array")
            a = arrays[name]
            spec.check_dtype(a.dtype, name)
            spec.check_shape(a.shape, name, bound)
            if spec.finite and a.dtype.kind == "f" and not np.isfinite(a).all():
                raise _Bad(name, "holds NaN or infinite values")
        unknown = [k for k in arrays if k not in specs]
        if unknown and not extra:
            raise _Bad(unknown[0], "not an array this file kind has")
    except _Bad as e:
        raise FileFormatError(path, e.key, e.problem) from None
    return bound


def _npy_header(f, what: str, key: str, size: int) -> Tuple[np.dtype, Tuple[int, ...], bool]:
    """(dtype, shape, fortran) of an .npy stream at its start, checked to fit
    the ``size`` bytes the stream holds (before anything is allocated)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise FileFormatError(what, key, f"not a .npy array ({e})") from None
    if dtype.hasobject:
        raise FileFormatError(what, key, f"dtype {dtype} holds Python objects")
    need = dtype.itemsize * math.prod(shape)
    have = size - f.tell()
    if need != have:
        raise FileFormatError(what, key, f"header claims shape {tuple(shape)} {dtype} "
                                         f"({need} bytes) but the file holds {have} bytes")
    return dtype, tuple(shape), fortran


def read_npy(path: str, spec: Array, bind: Optional[Mapping[str, int]] = None,
             key: str = "") -> np.ndarray:
    """An .npy file, its header checked against the file's size and ``spec``
    before the data is read (a forged header allocates nothing)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            dtype, shape, fortran = _npy_header(f, path, key, size)
            try:
                spec.check_dtype(dtype, key)
                spec.check_shape(shape, key, {k: int(v) for k, v in (bind or {}).items()})
            except _Bad as e:
                raise FileFormatError(path, e.key, e.problem) from None
            data = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    except OSError as e:
        raise FileFormatError(path, key, f"cannot read ({e.strerror or e})") from None
    arr = data.reshape(shape, order="F" if fortran else "C")
    check_arrays(path, {key or "array": arr}, {key or "array": spec}, bind)
    return arr


def read_npz(path: str, max_member_bytes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Every array of an .npz archive, each member's header checked against
    the bytes the member holds (stored, not compressed beyond its size) before
    it is read.  Returns {name without .npy: array}."""
    path = os.fspath(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            total = os.path.getsize(path)
            for info in z.infolist():
                name = info.filename
                key = name[:-4] if name.endswith(".npy") else name
                if not name.endswith(".npy") or key in out:
                    raise FileFormatError(path, key, "not an array member of an npz archive")
                limit = max_member_bytes if max_member_bytes is not None else total
                if info.file_size > limit and info.file_size > 64 * max(info.compress_size, 1):
                    raise FileFormatError(path, key, f"member claims {info.file_size} bytes "
                                                     f"from {info.compress_size} stored")
                with z.open(info) as f:
                    dtype, shape, fortran = _npy_header(f, path, key, info.file_size)
                    data = np.frombuffer(f.read(info.file_size), dtype=dtype)
                if data.size != math.prod(shape):
                    raise FileFormatError(path, key, "truncated array")
                out[key] = data.reshape(shape, order="F" if fortran else "C").copy()
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as e:
        raise FileFormatError(path, "", f"not a readable npz archive ({e})") from None
    return out
