"""File helpers every stage uses: atomic writes (text, JSON, npz) and SHA-256.

Atomic writes go to a temporary name beside the target, then os.replace.

A write that fails or is interrupted leaves the previous file (or none) under
the target name, never a partial one; the temporary file is removed - also
on SIGTERM/SIGHUP (a handler removes it, then lets the signal kill the process
as before) and SIGINT (KeyboardInterrupt).  A temporary left by a process
that died without a chance to clean up (SIGKILL, power loss) carries that
process's id in its name (``.tmp-<pid>-...``) and is removed by the next write
into the same folder once that process is gone.
"""
import atexit
import contextlib
import hashlib
import os
import re
import signal
import tempfile
import threading
from typing import Callable, Iterator, Optional

import numpy as np

TMP_PREFIX = ".tmp-"
_STALE = re.compile(r"^\.tmp-(\d+)-")
_live = set()               # temporaries this process is writing now
_lock = threading.RLock()   # re-entrant: the signal handler runs on the main thread
_handled = {}               # signal -> True once our handler is installed


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_live():
    with _lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def _on_signal(signum, _frame):
    # Remove our temporaries, then die of the same signal as without us.
    _remove_live()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers():
    """Clean-up handlers for SIGTERM/SIGHUP where nobody installed one (only
    the main thread may); atexit covers a normal exit."""
    if _handled or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_remove_live)
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)
        _handled[name] = True


@contextlib.contextmanager
def removed_on_signal(path: str) -> Iterator[str]:
    """Within the block, ``path`` is deleted if the process ends by SIGTERM,
    SIGHUP or a normal exit (for files written in place, e.g. a download's
    ``.part``).  Yields ``path``."""
    _install_handlers()
    with _lock:
        _live.add(path)
    try:
        yield path
    finally:
        with _lock:
            _live.discard(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder: str) -> list:
    """Delete ``.tmp-<pid>-*`` files in ``folder`` whose process is gone.

    Returns the paths removed.  Our own pid is skipped (another thread of
    this process may be writing)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _STALE.match(name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_open(path, mode="wb", check: Optional[Callable[[str], object]] = None,
                fsync=False, **open_kw):
    """``with atomic_open(path) as f: f.write(...)`` puts the file in place only
    when the block succeeds and ``check(tmp_path)``, when given, returns.

    The file gets the usual permissions (0666 less the umask, not mkstemp's 0600).
    An exception, SIGINT, SIGTERM or SIGHUP removes the temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    _install_handlers()
    with _lock:   # registered before a signal can find it unregistered
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder)
        _live.add(tmp)
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
    finally:
        with _lock:
            _live.discard(tmp)


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
