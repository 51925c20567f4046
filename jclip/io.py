"""File helpers every stage uses: durable atomic writes (text, JSON, npz, any
file), SHA-256 of files.

A write goes to a temporary name beside the target; the temporary is flushed
and fsynced, then re-read and checked (``check``: the text written, the npz's
arrays, or the caller's check of its file kind), and only then renamed over
the target, and the folder fsynced so the rename itself survives a crash.  A
write that fails (a full disk, ``RLIMIT_FSIZE``, a check that refuses what was
read back) or is interrupted leaves the previous file (or none) under the
target name, never a partial one; the temporary file is removed - also on
SIGTERM/SIGHUP (a handler removes it, then lets the signal kill the process as
before) and SIGINT (KeyboardInterrupt).  A temporary left by a process that
died without a chance to clean up (SIGKILL, power loss) carries that
process's id in its name (``.tmp-<pid>-...``) and is removed by the next write
into the same folder once that process is gone.

Test hooks (read once per process, used by tests/test_durable.py; unset in
normal use): ``JCLIP_WRITE_LOG=FILE`` appends the target of every atomic
write to FILE; ``JCLIP_KILL_AT_WRITE=K`` makes the K-th atomic write of the
process (counted from 1) SIGKILL the process when its temporary is complete,
just before the rename - a crash at exactly that point.
"""
import atexit
import contextlib
import errno
import hashlib
import os
import re
import shutil
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
_writes = [0]               # atomic writes this process made (the test hooks count them)
_owner = [None]             # the pid that installed the handlers (whose temporaries _live holds)


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
    if os.getpid() == _owner[0]:
        _remove_live()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _after_fork_in_child():
    """A forked child (Jittor's compiler pool forks at ``import jittor``) writes
    none of its parent's temporaries and must die of SIGTERM as it would
    without jclip: Pool.terminate at exit waits for it, and a worker that
    inherited the handler (and its lock, possibly held) once hung every
    process that imported jittor after a write.  So the child starts clean."""
    global _lock
    _lock = threading.RLock()
    _live.clear()
    for name in list(_handled):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is _on_signal:
            signal.signal(sig, signal.SIG_DFL)
    _handled.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _install_handlers():
    """Clean-up handlers for SIGTERM/SIGHUP where nobody installed one (only
    the main thread may); atexit covers a normal exit."""
    if _handled or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_remove_live)
    _owner[0] = os.getpid()
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


def fsync_dir(folder: str) -> None:
    """fsync a folder, so a rename or unlink in it survives a crash (a file
    system that cannot fsync folders is left as it is)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _before_rename(path: str) -> None:
    """The test hooks (module docstring): log the write, die at write K."""
    _writes[0] += 1
    log = os.environ.get("JCLIP_WRITE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {_writes[0]} {path}\n")
    kill = os.environ.get("JCLIP_KILL_AT_WRITE")
    if kill and kill.isdigit() and int(kill) == _writes[0]:
        os.kill(os.getpid(), signal.SIGKILL)


# a write that failed for want of room or of the disk: write(2) names no file
_WRITE_ERRNOS = {errno.EFBIG, errno.ENOSPC, errno.EIO, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _naming(error: BaseException, path: str) -> BaseException:
    """``error`` as an OSError naming ``path`` when it is a failed write that
    names no file (a full disk: "[Errno 28] No space left on device" would not
    say which output failed); any other exception as it is."""
    if isinstance(error, OSError) and error.filename is None and error.errno in _WRITE_ERRNOS:
        return OSError(error.errno, error.strerror, path)
    return error


@contextlib.contextmanager
def _removed_on_failure(tmp: str, path: str) -> Iterator[None]:
    """Within the block ``tmp`` is ``path``'s temporary: any failure (an
    exception, SIGINT) removes it and is raised again, a failed write
    re-raised naming ``path``; either way ``tmp`` is no longer live after."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        named = _naming(e, path)
        if named is e:
            raise
        raise named from e
    finally:
        with _lock:
            _live.discard(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="wb", check: Optional[Callable[[str], object]] = None,
                fsync=True, **open_kw):
    """``with atomic_open(path) as f: f.write(...)`` puts the file in place only
    when the block succeeds, the bytes are on disk (flush, fsync) and
    ``check(tmp_path)``, when given, returns (it re-reads the temporary and
    raises when it is not what was meant); the folder is fsynced after the
    rename.  ``fsync=False`` only for files that may be lost in a crash.

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
    with _removed_on_failure(tmp, path):
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _before_rename(path)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(folder)


class WriteCheckError(OSError):
    """A file read back after writing is not what was written (the disk or
    file system lost or changed bytes)."""


def atomic_write_text(path, text, check=None):
    """Write ``text`` (UTF-8, \\n line ends) atomically; the temporary is read
    back and compared with ``text``, then ``check(tmp_path)``, when given,
    validates it before the rename (if either fails, ``path`` is untouched)."""
    want = text.encode("utf-8")

    def verify(tmp):
        with open(tmp, "rb") as f:
            if f.read() != want:
                raise WriteCheckError(f"{path}: the file read back differs from what was written")
        if check is not None:
            check(tmp)
    with atomic_open(path, "w", verify, encoding="utf-8", newline="\n") as f:
        f.write(text)


def atomic_save_npz(path, arrays):
    """np.savez to a temporary file beside ``path``, read back and compared
    array by array, then os.replace'd."""
    from .file_schema import FileFormatError, read_npz
    arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def verify(tmp):
        try:
            got = read_npz(tmp)
        except FileFormatError as e:
            raise WriteCheckError(f"{path}: the file read back is damaged ({e.problem})") from None
        if set(got) != set(arrays) or any(
                got[k].dtype != a.dtype or got[k].shape != a.shape or
                not np.array_equal(got[k], a, equal_nan=a.dtype.kind in "fc") for k, a in arrays.items()):
            raise WriteCheckError(f"{path}: the file read back differs from what was written")
    with atomic_open(path, check=verify) as f:
        np.savez(f, **arrays)


def atomic_copy(src, dst) -> None:
    """Put a copy of ``src`` at ``dst`` atomically and durably: a hard link
    where the file system allows (no bytes copied), else a copy (compared
    with ``src`` by SHA-256 before the rename)."""
    dst = os.fspath(dst)
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-link-{os.path.basename(dst)}")
    with _lock:
        _live.add(tmp)
    with _removed_on_failure(tmp, dst):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as a, open(tmp, "wb") as b:
                shutil.copyfileobj(a, b, 1 << 20)
                b.flush()
                os.fsync(b.fileno())
            if sha256_file(tmp) != sha256_file(src):
                raise WriteCheckError(f"{dst}: the copy of {src} differs from it")
        _before_rename(dst)
        os.replace(tmp, dst)
        fsync_dir(folder)


def sha256_file(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
