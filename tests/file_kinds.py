"""A reusable mutation harness for the files jclip writes and reads back.

:func:`mutants` turns one valid file of a kind (split by its codec into a
JSON header and named arrays) into every damaged copy: each header key
removed (recursively); each value's type swapped (int <-> text, list <->
object, null, past int64, NaN and 1e999, which JSON does not allow); each
array removed, truncated (a row dropped), NaN-ed, reshaped, re-typed; the
file truncated at several offsets; an array header forged to claim 8 GiB.
:func:`check_kind` reads them all in ONE subprocess under ``RLIMIT_AS``
(1 GiB unless the kind says otherwise; the valid file first: it must load)
and returns one line per mutant accepted, refused with anything but a
``ValueError``, crashing the reader, taking over a second of CPU, or refused
by a message that does not name the file (and the key at fault).  Mutants a
kind may accept are its ``tolerate`` patterns (fnmatch on the mutant id); a
pattern that matches nothing accepted is reported too, so it cannot go stale.

    kind = FileKind("lpp head", make, "jclip.heads.registry:check_head_file", NpzHeader())
    assert check_kind(kind, tmp_path) == []

Readers are "module:function" (tests/ is on the path), called ``function(path, *reader_args)``.
"""
import fnmatch
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30
CPU_SECONDS = 1.0            # per mutant, measured as CPU time (not wall clock) in the reader's process
_HUGE = "\x00JCLIP-HUGE\x00"  # planted as the bare literal 1e999 (JSON's parsers read it as inf)


# --------------------------------------------------------------------------
# Codecs: a file's bytes <-> (header, arrays)
# --------------------------------------------------------------------------

def _dumps(value) -> str:
    """JSON text that may hold NaN (Python writes the bare token) and the 1e999 literal."""
    return json.dumps(value).replace(json.dumps(_HUGE), "1e999")


def _forged_npy(arr: np.ndarray) -> bytes:
    """An .npy header claiming 2^31 float32 values (8 GiB), then ``arr``'s few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (1 << 31,)})
    return buf.getvalue() + np.ascontiguousarray(arr).tobytes()


class Codec:
    """How one file kind's bytes split into a JSON header and named arrays."""

    def decode(self, data: bytes) -> Tuple[Any, Dict[str, np.ndarray]]:
        raise NotImplementedError

    def encode(self, header: Any, arrays: Dict[str, np.ndarray]) -> bytes:
        raise NotImplementedError

    def forge_huge(self, header, arrays, name: str) -> Optional[bytes]:
        """The file with array ``name``'s header claiming 8 GiB (None: not applicable)."""
        return None

    def format_fault(self, path: tuple, value) -> bool:
        """True when planting ``value`` at header ``path`` breaks the container
        format itself (its parser refuses the file; no key need be named)."""
        return False


class JsonFile(Codec):
    """The whole file is one JSON document (manifest, tuned configuration, index)."""

    def decode(self, data):
        return json.loads(data), {}

    def encode(self, header, arrays):
        return _dumps(header).encode()


class NpyFile(Codec):
    """One .npy array and no header (extract's shards)."""

    def __init__(self, name: str = "array"):
        self.name = name

    def decode(self, data):
        return None, {self.name: np.load(io.BytesIO(data), allow_pickle=False)}

    def encode(self, header, arrays):
        if self.name not in arrays:
            return b""
        buf = io.BytesIO()
        np.save(buf, arrays[self.name], allow_pickle=False)
        return buf.getvalue()

    def forge_huge(self, header, arrays, name):
        return _forged_npy(arrays[name])


class NpzHeader(Codec):
    """An npz archive whose member ``meta_key`` holds the JSON header as a
    0-d text array (jclip's head files); other members are the arrays."""

    def __init__(self, meta_key: str = "__meta__"):
        self.meta_key = meta_key

    def decode(self, data):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop(self.meta_key))) if self.meta_key in arrays else None
        return header, arrays

    def _members(self, header, arrays) -> Dict[str, bytes]:
        out = {}
        if header is not None:
            arrays = {self.meta_key: np.array(_dumps(header)), **arrays}
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.save(buf, v, allow_pickle=False)
            out[k] = buf.getvalue()
        return out

    def _zip(self, members: Dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for k, b in members.items():
                z.writestr(k + ".npy", b)
        return buf.getvalue()

    def encode(self, header, arrays):
        return self._zip(self._members(header, arrays))

    def forge_huge(self, header, arrays, name):
        members = self._members(header, arrays)
        members[name] = _forged_npy(arrays[name])
        return self._zip(members)


_ST_DTYPES = {"BOOL": "bool", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
              "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
              "F16": "float16", "F32": "float32", "F64": "float64"}
_TO_ST = {v: k for k, v in _ST_DTYPES.items()}


class Safetensors(Codec):
    """A safetensors file; the header is its ``__metadata__`` (str -> str),
    with the entries named in ``json_values`` decoded (jclip keeps its typed
    meta as JSON text there).  The data's SHA-256 (``jclip_data_sha256``) is
    recomputed for every mutant, so a mutant tests the schema, not the
    checksum."""

    SHA_KEY = "jclip_data_sha256"

    def __init__(self, json_values: Sequence[str] = ()):
        self.json_values = tuple(json_values)

    def decode(self, data):
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = dict(header.pop("__metadata__", {}))
        for k in self.json_values:
            if k in meta:
                meta[k] = json.loads(meta[k])
        arrays = {}
        for name, t in header.items():
            a, b = t["data_offsets"]
            arrays[name] = np.frombuffer(data[8 + n + a:8 + n + b], _ST_DTYPES[t["dtype"]]).reshape(t["shape"])
        return meta, arrays

    def _build(self, meta, arrays, shapes: Optional[Dict[str, list]] = None) -> bytes:
        tensors, blocks, offset = {}, [], 0
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
            if arr.dtype.name not in _TO_ST:
                arr = arr.astype(np.float32)
            raw = arr.tobytes()
            shape = (shapes or {}).get(name, list(arr.shape))
            tensors[name] = {"dtype": _TO_ST[arr.dtype.name], "shape": shape,
                             "data_offsets": [offset, offset + len(raw)]}
            blocks.append(raw)
            offset += len(raw)
        data = b"".join(blocks)
        if isinstance(meta, dict):
            # jclip's JSON entries re-encoded; a planted non-text value elsewhere stays so
            meta = {k: (_dumps(v) if k in self.json_values else v) for k, v in meta.items()}
            if isinstance(meta.get(self.SHA_KEY), str):
                meta[self.SHA_KEY] = hashlib.sha256(data).hexdigest()
        text = _dumps({"__metadata__": meta, **tensors}).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + data

    def encode(self, header, arrays):
        return self._build(header, arrays)

    def format_fault(self, path, value):
        # safetensors metadata is str -> str: the package's parser refuses anything else
        return len(path) == 1 and path[0] not in self.json_values and not isinstance(value, str)

    def forge_huge(self, header, arrays, name):
        return self._build(header, arrays, {name: [1 << 31]})


# --------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------

@dataclass
class Mutant:
    id: str              # "header:params.lr:null", "array:fitted/weight_:nan", "bytes:truncate@100"
    data: bytes
    key: Optional[str]   # what the message must name besides the file (None: the file only)


def _join(where: str, key) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _last_key(path: Sequence) -> Optional[str]:
    """The innermost dictionary key on ``path`` (list positions skipped)."""
    for k in reversed(path):
        if isinstance(k, str):
            return k
    return None


def _swaps(value) -> List[Tuple[str, Any]]:
    """(name, replacement) for every wrong-typed stand-in of a JSON value."""
    if isinstance(value, bool):
        return [("text", "true"), ("int", 1), ("null", None)]
    if isinstance(value, int):
        return [("text", str(value)), ("null", None), ("huge", 1 << 64), ("nan", float("nan")),
                ("inf", _HUGE), ("float", value + 0.5), ("list", [value])]
    if isinstance(value, float):
        return [("text", str(value)), ("null", None), ("nan", float("nan")), ("inf", _HUGE),
                ("list", [value])]
    if isinstance(value, str):
        return [("int", 7), ("null", None), ("list", [value]), ("object", {"x": value})]
    if isinstance(value, list):
        return [("object", {str(i): v for i, v in enumerate(value)}), ("null", None), ("text", "x")]
    if isinstance(value, dict):
        return [("list", list(value.values())), ("null", None), ("text", "x")]
    return [("object", {}), ("text", "x")]                            # null


def _set(root, path, replace=True, value=None):
    """A deep copy of ``root`` with the value at ``path`` replaced (or removed)."""
    root = json.loads(json.dumps(root))
    node = root
    for k in path[:-1]:
        node = node[k]
    if replace:
        node[path[-1]] = value
    else:
        del node[path[-1]]
    return root


def _walk(value, path=()) -> Iterator[Tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, path + (i,))


def _array_variants(a: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    out = []
    if a.ndim >= 1 and a.shape[0] >= 1:
        out.append(("truncate", a[:-1]))
    if a.dtype.kind == "f" and a.size:
        b = a.copy()
        b.reshape(-1)[b.size // 2] = np.nan
        out.append(("nan", b))
    if a.ndim >= 2:
        out.append(("reshape", a.reshape(-1)))
    else:
        out.append(("reshape", a.reshape((1,) + a.shape)))
    retype = {"f": np.int32, "i": np.float32, "u": np.float32, "b": np.int8, "U": np.int32}.get(a.dtype.kind)
    if retype is not None:
        try:
            r = a.astype(retype) if a.dtype.kind != "U" else np.zeros(a.shape, retype)
        except ValueError:
            r = np.zeros(a.shape, retype)
        out.append(("retype", r))
    return out


def mutants(data: bytes, codec: Codec) -> List[Mutant]:
    """Every mutant of the valid file ``data`` (each differs from it)."""
    header, arrays = codec.decode(data)
    out: List[Mutant] = []

    def add(mid, new, key):
        if new != data:
            out.append(Mutant(mid, new, key))

    if header is not None:
        for path, value in _walk(header):
            if not path:
                for name, v in _swaps(value):
                    add(f"header::{name}", codec.encode(v, arrays), None)
                continue
            where = "".join(f"[{k}]" if isinstance(k, int) else (("." if i else "") + k)
                            for i, k in enumerate(path))
            key = _last_key(path)
            if isinstance(path[-1], str):
                add(f"header:{where}:removed", codec.encode(_set(header, path, replace=False), arrays), key)
            for name, v in _swaps(value):
                # a bare NaN makes the whole text invalid JSON: the file is at fault, not a key
                add(f"header:{where}:{name}", codec.encode(_set(header, path, value=v), arrays),
                    None if name == "nan" or codec.format_fault(path, v) else key)
    for name, a in arrays.items():
        rest = {k: v for k, v in arrays.items() if k != name}
        add(f"array:{name}:removed", codec.encode(header, rest), name)
        for how, b in _array_variants(a):
            new = dict(arrays)
            new[name] = b
            # a dropped row or a new shape may be reported at the array it now disagrees with
            add(f"array:{name}:{how}", codec.encode(header, new), name if how in ("nan", "retype") else "*array*")
        forged = codec.forge_huge(header, arrays, name)
        if forged is not None:
            add(f"array:{name}:forged-8GiB", forged, None)
    for at in sorted({0, 1, 8, len(data) // 4, len(data) // 2, len(data) - 1} - {len(data)}):
        add(f"bytes:truncate@{at}", data[:at], None)
    return out


# --------------------------------------------------------------------------
# Running a reader over the mutants
# --------------------------------------------------------------------------

@dataclass
class FileKind:
    """One kind of file: ``make(folder) -> path`` writes a valid one;
    ``reader`` "module:function" reads it (``function(path, *reader_args)``);
    ``tolerate``: fnmatch patterns of mutant ids the reader may accept."""

    name: str
    make: Callable[[str], str]
    reader: str
    codec: Codec
    reader_args: Sequence[Any] = ()
    tolerate: Sequence[str] = ()
    suffix: Optional[str] = None        # the mutants' file name ending (default: the valid file's)
    address_space: Optional[int] = GIB  # RLIMIT_AS of the reader's process (None: none)


_CHILD = r"""
import json, os, resource, sys, time, traceback
if {limit} is not None:
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
job = json.load(open(sys.argv[1]))
mod, fn = job["reader"].split(":")
import importlib
reader = getattr(importlib.import_module(mod), fn)
out = open(job["results"], "w")
def read(path):
    t = time.process_time()
    try:
        reader(path, *job["args"])
        r = {{"outcome": "accepted"}}
    except ValueError as e:
        r = {{"outcome": "refused", "type": type(e).__name__, "message": str(e)}}
    except BaseException as e:
        r = {{"outcome": "crashed", "type": type(e).__name__, "message": str(e)[:300],
             "where": traceback.format_exc().strip().splitlines()[-3:]}}
    r["cpu"] = time.process_time() - t
    out.write(json.dumps(r) + "\n")
    out.flush()
for path in job["paths"]:
    read(path)
"""


def check_kind(kind: FileKind, folder: str, timeout: float = 600) -> List[str]:
    """Every way ``kind``'s reader fails the harness, one line each ([] when it
    refuses every mutant properly)."""
    folder = os.fspath(folder)
    valid = kind.make(os.path.join(folder, "valid"))
    with open(valid, "rb") as f:
        data = f.read()
    suffix = kind.suffix if kind.suffix is not None else os.path.splitext(valid)[1]
    todo = mutants(data, kind.codec)
    mdir = os.path.join(folder, "mutants")
    os.makedirs(mdir, exist_ok=True)
    paths = [valid]
    for i, m in enumerate(todo):
        p = os.path.join(mdir, f"m{i:04d}{suffix}")
        with open(p, "wb") as f:
            f.write(m.data)
        paths.append(p)
    job = os.path.join(folder, "job.json")
    results = os.path.join(folder, "results.jsonl")
    with open(job, "w") as f:
        json.dump({"reader": kind.reader, "args": list(kind.reader_args), "paths": paths,
                   "results": results}, f)
    # under sh, a death by signal N is exit status 128+N (a Jittor imported into
    # this process would quit on the SIGCHLD of a child killed by a signal); a
    # Jittor here also raised RLIMIT_STACK to 512 MiB, which glibc takes as every
    # thread's stack at start: the reader starts with the usual 8 MiB
    proc = subprocess.run(["sh", "-c", 'ulimit -S -s 8192; "$0" "$@"; exit $?', sys.executable, "-c",
                           _CHILD.format(limit=kind.address_space, root=ROOT), job],
                          capture_output=True, text=True, timeout=timeout, cwd=folder)
    got = []
    if os.path.exists(results):
        with open(results) as f:
            got = [json.loads(line) for line in f]
    problems = []
    if len(got) < len(paths):
        where = todo[len(got) - 1].id if len(got) >= 2 else "the valid file"
        problems.append(f"{kind.name}: reader process died (rc {proc.returncode}) at {where}: "
                        f"{proc.stderr.strip()[-300:]}")
    if got and got[0]["outcome"] != "accepted":
        problems.append(f"{kind.name}: the valid file is not read: {got[0]}")
    used = set()
    for m, path, r in zip(todo, paths[1:], got[1:]):
        tolerated = [p for p in kind.tolerate if fnmatch.fnmatchcase(m.id, p)]
        if r["cpu"] > CPU_SECONDS:
            problems.append(f"{kind.name}: {m.id}: {r['cpu']:.2f} s of CPU")
        if r["outcome"] == "accepted":
            if tolerated:
                used.update(tolerated)
            else:
                problems.append(f"{kind.name}: {m.id}: accepted")
        elif r["outcome"] == "crashed":
            problems.append(f"{kind.name}: {m.id}: {r['type']}: {r['message'][:150]} {r['where']}")
        else:
            msg = r["message"]
            if tolerated:
                used.update(tolerated)
            if path not in msg:
                problems.append(f"{kind.name}: {m.id}: message does not name the file: {msg[:200]}")
            elif "\n" in msg.strip():
                problems.append(f"{kind.name}: {m.id}: message is not one line: {msg[:200]}")
            elif m.key == "*array*":
                if not any(k in msg for k in kind.codec.decode(data)[1]):
                    problems.append(f"{kind.name}: {m.id}: message names no array: {msg[:200]}")
            elif m.key is not None and m.key not in msg:
                problems.append(f"{kind.name}: {m.id}: message does not name {m.key!r}: {msg[:200]}")
    for p in kind.tolerate:
        if p not in used:
            problems.append(f"{kind.name}: tolerate pattern {p!r} matches no accepted mutant")
    return problems

