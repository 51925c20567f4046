"""File helpers every stage uses: atomic writes (text, JSON, npz) and SHA-256.

Atomic writes go to a temporary name beside the target, then os.replace.

A write that fails or is interrupted leaves the previous file (or none) under
the target name, never a partial one; the temporary file is removed.
"""
import contextlib
import hashlib
import os
import tempfile

import numpy as np


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path, mode="wb", check=None, fsync=False, **open_kw):
    """``with atomic_open(path) as f: f.write(...)`` puts the file in place only
    when the block succeeds and ``check(tmp_path)``, when given, returns.

    The file gets the usual permissions (0666 less the umask, not mkstemp's 0600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text, check=None):
    """Write ``text`` (UTF-8, \\n line ends) atomically; ``check(tmp_path)``, when
    given, validates the written file before the rename (if it raises, ``path``
    is untouched)."""
    with atomic_open(path, "w", check, encoding="utf-8", newline="\n") as f:
        f.write(text)


def atomic_save_npz(path, arrays):
    """np.savez to a temporary file beside ``path``, then os.replace it."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
