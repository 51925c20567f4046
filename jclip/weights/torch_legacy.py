"""Legacy PyTorch checkpoints (torch < 1.6, or ``_use_new_zipfile_serialization=False``)
read into numpy without importing torch.

The file is consecutive pickles (magic number, protocol, system info, the
object, the storage keys) followed by each storage's raw bytes, each
prefixed by its element count.  Every pickle goes through
:mod:`.torch_reader`'s restricted unpickler; every declared size is checked
against the bytes left before anything is allocated.
"""
import os
import struct

import numpy as np

from .safe_pickle import Budget, FormatError, check_index
from .torch_reader import Storage, resolve_tensors, storage_pid, unpickle

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")


def is_legacy(head):
    return head.startswith(_LEGACY_PREFIX)


def read_legacy(path):
    """The object saved by torch.save(..., _use_new_zipfile_serialization=
    False).  Every storage's declared size is checked against the bytes left
    in the file before it is allocated."""
    storages, views = {}, []
    size = os.path.getsize(path)
    budget = Budget(size, factor=4)

    def load_storage(pid):
        stype, key = storage_pid(pid)[1:3]
        if not isinstance(key, str):
            raise FormatError("storage key is not a string")
        view = pid[5] if len(pid) > 5 else None
        if key not in storages:
            storages[key] = Storage(stype, key)
        st = storages[key]
        if view is not None:
            # An old-style storage view: (view_key, offset, size).
            if not (isinstance(view, tuple) and len(view) == 3):
                raise FormatError(f"storage view of {key} is malformed")
            _view_key, offset, vsize = view
            views.append(_StorageView(st, check_index(offset, f"view offset in {key}"),
                                      check_index(vsize, f"view size in {key}")))
            return views[-1]
        return st

    with open(path, "rb") as f:
        if unpickle(f, end=size) != _LEGACY_MAGIC:
            raise FormatError("bad magic number")
        protocol = unpickle(f, end=size)
        if protocol != 1001:
            raise FormatError(f"unsupported legacy protocol {str(protocol)[:40]}")
        sys_info = unpickle(f, end=size)
        if isinstance(sys_info, dict) and not sys_info.get(
                "little_endian", True):
            raise FormatError("big-endian legacy files are not supported")
        obj = unpickle(f, load_storage, end=size)
        keys = unpickle(f, end=size)
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
            raise FormatError("the storage key list is not a list of strings")
        for key in keys:
            st = storages.get(key)
            if st is None:
                raise FormatError(f"unknown storage key {key[:40]!r}")
            if st.data is not None:
                raise FormatError(f"storage {key[:40]!r} listed twice")
            head = f.read(8)
            if len(head) != 8:
                raise FormatError("file is truncated")
            (numel,) = struct.unpack("<q", head)
            nbytes = numel * st.type.dtype.itemsize
            left = size - f.tell()
            if numel < 0 or nbytes > left:
                # Checked before allocating: a 352-byte file may declare 12 GiB.
                raise FormatError(
                    f"storage {key[:40]!r} declares {numel} elements ({nbytes} bytes), "
                    f"but only {left} bytes are left in the file")
            raw = bytearray(nbytes)
            if f.readinto(raw) != nbytes:
                raise FormatError("file is truncated")
            st.data = np.frombuffer(raw, st.type.dtype)
        if f.read(1):
            # Bytes after the last storage: shifted or spliced data.
            raise FormatError("unexpected bytes after the last storage")
    for view in views:
        view.resolve()
    return resolve_tensors(obj, budget)


class _StorageView(Storage):
    """A legacy view (offset, size) into another storage."""

    def __init__(self, base, offset, size):
        super().__init__(base.type, f"{base.key}[{offset}:{offset + size}]")
        self.base, self.start, self.size = base, offset, size

    def resolve(self):
        if self.base.data is not None:
            self.data = self.base.data[self.start:self.start + self.size]
