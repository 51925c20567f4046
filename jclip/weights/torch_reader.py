"""Read PyTorch checkpoints into numpy without importing torch: the zip
formats here, the legacy one in :mod:`.torch_legacy` (sharing this module's
restricted unpickler and tensor stand-ins).

Three layouts exist in the wild:

* torch.save since 1.6: a zip holding ``<root>/data.pkl`` (the pickled object)
  and ``<root>/data/<key>`` (one raw little-endian file per storage);
* TorchScript archives (``torch.jit.save``, OpenAI's CLIP ``.pt`` files): the
  same zip layout, but ``data.pkl`` pickles the module itself as ``__torch__.*``
  objects whose attributes are tensors and submodules; ``code/`` declares which
  attributes are parameters and buffers;
* the legacy format (torch < 1.6): consecutive pickles (magic number, protocol,
  system info, the object, the storage keys) followed by each storage's raw
  bytes, each prefixed by its element count.

Every pickle goes through :class:`_RestrictedUnpickler`, which resolves only
the handful of globals these layouts use, to inert local stand-ins; anything
else (``os.system``, ``builtins.eval``...) raises, so a crafted file cannot
run code.

Every size a file declares (shapes, strides, offsets, storage sizes, pickle
record lengths) is checked against the bytes actually present before anything
is allocated, and the bytes materialised are capped by a
:class:`~jclip.weights.safe_pickle.Budget` derived from the file's size (see
docs/security.md).
"""
import io
import math
import os
import pickle
import re
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .safe_pickle import Budget, FormatError, check_index, check_shape, guarded_load

# Little-endian (byteorder "little" is what torch writes on every platform
# jclip runs on; a "big" archive is byte-swapped below).
_STORAGE_DTYPES = {
    "HalfStorage": "<f2", "FloatStorage": "<f4", "DoubleStorage": "<f8",
    "BFloat16Storage": "<u2",  # widened to float32 after slicing
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class ScriptObject:
    """A TorchScript ``__torch__.*`` object reduced to its class name and its
    attribute dict."""
    qualname = ""

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"ScriptObject({self.qualname})"


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class Storage:
    """A storage's dtype plus its flat data, filled in by the loader."""

    def __init__(self, storage_type, key):
        self.type = storage_type
        self.key = key
        self.data = None  # 1-D numpy array once read


class _TensorRef:
    """A view into a storage; turned into an ndarray once storages are read
    (the legacy format stores the bytes after the pickle)."""

    def __init__(self, storage, offset, shape, stride):
        # Checked in _materialize (a hostile file can put anything here).
        self.storage, self.offset = storage, offset
        self.shape, self.stride = shape, stride


def _rebuild_tensor(storage, offset, shape, stride, *_ignored):
    if not isinstance(storage, Storage):
        raise FormatError("tensor without a storage")
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, _new_type, args, _state):
    # A Tensor subclass (e.g. nn.Parameter saved whole): keep the plain data.
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise FormatError("unexpected tensor rebuild function")
    return func(*args)


class _Marker:
    """Inert stand-in for a torch type that only ever appears as an argument."""

    def __init__(self, name):
        self.name = name


def _identity_list(value):
    return list(value)


def _restore_type_tag(value, _type_str):
    return value


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): _Marker("Parameter"),
    ("torch", "Tensor"): _Marker("Tensor"),
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _identity_list,
    ("torch.jit._pickle", "build_floatlist"): _identity_list,
    ("torch.jit._pickle", "build_doublelist"): _identity_list,
    ("torch.jit._pickle", "build_boollist"): _identity_list,
    ("torch.jit._pickle", "build_tensorlist"): _identity_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load=None):
        super().__init__(file)
        self._pid = persistent_load
        self._script_classes = {}

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            cls = self._script_classes.get(qualname)
            if cls is None:
                cls = type(name, (ScriptObject,), {"qualname": qualname})
                self._script_classes[qualname] = cls
            return cls
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}' (only tensors, "
            "plain containers and TorchScript modules are allowed)")

    def persistent_load(self, pid):
        if self._pid is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._pid(pid)


def unpickle(data_or_file, persistent_load=None, end=None):
    """One restricted pickle from bytes, or from a file object whose size is
    ``end`` (safe_pickle's guarded sequence)."""
    if isinstance(data_or_file, (bytes, bytearray)):
        f, end = io.BytesIO(data_or_file), len(data_or_file)
    else:
        f = data_or_file
    return guarded_load(_RestrictedUnpickler(f, persistent_load), f, end, children=_children)


def _children(obj):
    """What check_depth walks into: containers and TorchScript modules' state."""
    if isinstance(obj, ScriptObject):
        state = getattr(obj, "state", None)
        return list(state.values()) if isinstance(state, dict) else ()
    return None


def storage_pid(pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
        raise FormatError(f"unexpected persistent id {pid!r:.80}")
    return pid


def _materialize(ref, budget):
    """ndarray for a _TensorRef: a view of the storage when it covers it all
    contiguously (no copy), else a strided copy charged to ``budget``.  Shape,
    stride and offset are checked (Python ints, no overflow) first."""
    st = ref.storage
    data = st.data
    if data is None:
        raise FormatError(f"storage {st.key} has no data")
    what = f"tensor in storage {st.key}"
    shape = check_shape(ref.shape, what)
    stride = check_shape(ref.stride, what + " (stride)")
    offset = check_index(ref.offset, what + " offset")
    if len(stride) != len(shape):
        raise FormatError(f"{what}: shape {shape} and stride {stride} differ in length")
    n = math.prod(shape)
    if n == 0:
        arr = np.empty(shape, data.dtype)
    else:
        last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
        if last >= data.size:
            raise FormatError(
                f"tensor of shape {shape} runs past its storage "
                f"{st.key} ({data.size} elements)")
        contiguous = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        if offset == 0 and n == data.size and \
                all(d == 1 or s == c for d, s, c in zip(shape, stride, contiguous)):
            arr = data.reshape(shape)
        else:
            item = data.dtype.itemsize
            # A stride-0 view of 2**40 elements would be a 4 TiB copy.
            budget.take(n * item, f"tensor of shape {shape} (storage {st.key})")
            arr = np.lib.stride_tricks.as_strided(
                data[offset:], shape, tuple(s * item for s in stride)).copy()
    if st.type.name == "BFloat16Storage":
        budget.take(arr.size * 4, f"bfloat16 tensor of shape {shape}")
        wide = arr.astype(np.uint32).reshape(-1)
        wide <<= 16  # in place: keeps uint32 (no promotion for 0-d arrays)
        arr = wide.view(np.float32).reshape(arr.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def resolve_tensors(obj, budget, memo=None):
    """Replace every _TensorRef inside containers and ScriptObjects by its
    ndarray (in place for ScriptObjects, so shared modules stay shared).
    Depth was bounded by unpickle's check_depth."""
    if memo is None:
        memo = {}
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, _TensorRef):
        out = _materialize(obj, budget)
    elif isinstance(obj, dict):
        out = type(obj)((k, resolve_tensors(v, budget, memo)) for k, v in obj.items()) \
            if isinstance(obj, OrderedDict) else \
            {k: resolve_tensors(v, budget, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [resolve_tensors(v, budget, memo) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(resolve_tensors(v, budget, memo) for v in obj)
    elif isinstance(obj, ScriptObject):
        memo[id(obj)] = obj
        if isinstance(getattr(obj, "state", None), dict):
            obj.state = {k: resolve_tensors(v, budget, memo) for k, v in obj.state.items()}
        return obj
    else:
        out = obj
    memo[id(obj)] = out
    return out


# ---------------------------------------------------------------- zip format

def _zip_root(zf):
    roots = [n[:-len("data.pkl")] for n in zf.namelist()
             if n.endswith("data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise FormatError(
            "zip archive without a single '<root>/data.pkl': not a torch "
            "checkpoint")
    return roots[0]


_MAX_CODE = 64 << 20   # code/*.py and data.pkl: OpenAI's are < 1 MB


def _read_member(zf, name, limit, budget):
    """The bytes of zip member ``name``, decompressing at most ``limit`` bytes
    (and no more than ``budget`` allows): a zip bomb stops at the bound, and a
    member whose real size differs from its directory entry is refused."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise FormatError(f"zip member {name} is missing") from None
    if info.file_size > limit:
        raise FormatError(
            f"zip member {name} declares {info.file_size} bytes, more than the "
            f"{limit} it may hold")
    budget.take(info.file_size, f"zip member {name}")
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as e:
        raise FormatError(f"corrupt zip member {name} ({str(e)[:200]})") from None
    if len(data) != info.file_size:
        raise FormatError(
            f"zip member {name} holds {len(data)} bytes, its directory entry says "
            f"{info.file_size}")
    return data


def _parse_declarations(zf, root, budget):
    """{qualname: (parameters, buffers)} from the ``code/`` of a TorchScript
    archive; ``buffers`` is None when the file predates ``__buffers__``."""
    decls = {}
    head = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n|\n)*)", re.M)
    names = re.compile(r'"([^"]*)"')
    for name in zf.namelist():
        if not (name.startswith(root + "code/") and name.endswith(".py")):
            continue
        module = name[len(root + "code/"):-3].replace("/", ".")
        text = _read_member(zf, name, _MAX_CODE, budget).decode("utf-8", "replace")
        for m in head.finditer(text):
            body = m.group(2)
            p = re.search(r"^  __parameters__ = \[(.*)\]", body, re.M)
            b = re.search(r"^  __buffers__ = \[(.*)\]", body, re.M)
            decls[f"{module}.{m.group(1)}"] = (
                names.findall(p.group(1)) if p else [],
                names.findall(b.group(1)) if b else None)
    return decls


def _flatten_script(obj, decls, prefix="", out=None, seen=None):
    """The state dict ``torch.jit.load(...).state_dict()`` returns: own
    parameters, then buffers, then submodules, recursively (depth bounded by
    unpickle; a module reachable twice is visited once)."""
    if out is None:
        out, seen = OrderedDict(), set()
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return out
    params, buffers = decls.get(obj.qualname, (None, None))
    if params is None:      # no code for this class: keep every tensor
        own = [k for k, v in state.items() if isinstance(v, np.ndarray)]
    elif buffers is None:   # old archive without __buffers__: params + rest
        own = params + [k for k, v in state.items()
                        if isinstance(v, np.ndarray) and k not in params]
    else:
        own = params + buffers
    for k in own:
        if isinstance(state.get(k), np.ndarray):   # None: e.g. bias=False
            out[prefix + k] = state[k]
    for k, v in state.items():
        if isinstance(v, ScriptObject):
            _flatten_script(v, decls, f"{prefix}{k}.", out, seen)
    return out


def read_zip(path):
    """(object, kind) from a torch zip file; kind is "torchscript" (object is
    then the flat state dict) or "torch-zip" (whatever torch.save pickled)."""
    budget = Budget(os.path.getsize(path), factor=4)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise FormatError(f"corrupt or truncated zip archive ({e})") \
            from None
    with zf:
        names = zf.namelist()
        if len(set(names)) != len(names):
            # zipfile would silently take the last copy of a duplicated name.
            dup = next(n for n in names if names.count(n) > 1)
            raise FormatError(f"zip member {dup[:80]} appears twice")
        root = _zip_root(zf)
        order = "little"
        if root + "byteorder" in zf.namelist():
            raw = _read_member(zf, root + "byteorder", 16, budget)
            order = raw.decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise FormatError(
                    f"byteorder record is {raw[:16]!r}, not 'little' or 'big'")
        storages = {}

        def load_storage(pid):
            _, stype, key, _location, numel = storage_pid(pid)[:5]
            if not isinstance(key, str) or "/" in key or key in ("", ".", ".."):
                raise FormatError("storage key is not a plain name")
            if key not in storages:
                # The member may hold no more than the storage's declared size.
                nbytes = check_index(numel, f"storage data/{key} size") * stype.dtype.itemsize
                raw = bytearray(_read_member(zf, f"{root}data/{key}", nbytes, budget))
                dtype = stype.dtype if order == "little" \
                    else stype.dtype.newbyteorder(">")
                if len(raw) % dtype.itemsize:
                    raise FormatError(f"storage data/{key} is truncated")
                st = Storage(stype, key)
                st.data = np.frombuffer(raw, dtype)
                storages[key] = st
            return storages[key]

        obj = unpickle(_read_member(zf, root + "data.pkl", _MAX_CODE, budget), load_storage)
        obj = resolve_tensors(obj, budget)
        if isinstance(obj, ScriptObject):
            return _flatten_script(obj, _parse_declarations(zf, root, budget)), \
                "torchscript"
        return obj, "torch-zip"
