"""A verified download over HTTP: a ``.part`` file checked (size, SHA-256,
content) before it is renamed, resumed when a killed process left one,
refused while another process holds it, with stall and total time limits.

A body never runs past the size the server announces (http.client stops
at Content-Length), nor past ``max_bytes`` (``size_limit``: what a checkpoint
of the card's architecture can hold) when the server announces none.  Where
each model's original lives and what it must hash to is the catalogue's
(``jclip.catalog.sources``); open_clip's files come through ``huggingface_hub``
(``hub.py``).
"""
import contextlib
import hashlib
import http.client
import math
import os
import socket
import time
import urllib.error
import urllib.request

from ..catalog import ModelCard, state_dict_layout
from ..io import removed_on_signal
from .checkpoint import CheckpointError


class DownloadError(CheckpointError):
    """A download failed or did not match its checksum."""


class _PartBusy(DownloadError):
    """The .part is another live process's: leave it alone."""


STALL_TIMEOUT = 60      # seconds without a byte before a download fails
MAX_TIME = 6 * 3600     # seconds a whole download may take


def size_limit(card: ModelCard):
    """The most bytes an honest checkpoint of ``card``'s architecture takes:
    twice its float32 parameters (room for a second copy, e.g. EMA weights)
    plus 64 MiB of container, code and metadata; None without an architecture."""
    if card.architecture is None:
        return None
    params = sum(math.prod(shape) for shape in state_dict_layout(card.architecture).values())
    return 2 * 4 * params + (64 << 20)


def _lock_part(f, part):
    """An exclusive lock on the open ``.part``: a concurrent download of the
    same file is refused instead of interleaving with it; a ``.part`` nobody
    holds was left by a dead process and is resumed."""
    try:
        import fcntl
    except ImportError:     # not POSIX: no lock, resume anyway
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise _PartBusy(f"{part}: another process is downloading this file") from None


def _open_transfer(url, have, stall):
    """(response, appending): a ranged request resuming after ``have`` bytes
    when there are some and the server honours it, else the whole body."""
    req = urllib.request.Request(url)
    if have:
        req.add_header("Range", f"bytes={have}-")
    resp = urllib.request.urlopen(req, timeout=stall)
    ranged = have and resp.status == 206 and str(
        resp.headers.get("Content-Range", "")).startswith(f"bytes {have}-")
    return resp, bool(ranged)


def download(url, dest, sha256=None, verify=None, progress=True,
             timeout=STALL_TIMEOUT, max_time=MAX_TIME, max_bytes=None):
    """Fetch ``url`` to ``dest`` through ``dest + ".part"``; returns the
    file's SHA-256.

    The ``.part`` is renamed only after the whole body arrived, matched
    ``sha256`` (when given) and passed ``verify(part_path)`` (when given; it
    raises CheckpointError to reject, e.g. an HTML error page).  A transfer
    with no byte for ``timeout`` seconds, or longer than ``max_time`` seconds
    in all, fails, and so does one announcing or sending more than
    ``max_bytes`` (when given).  On any failure, and on SIGTERM/SIGINT, the ``.part`` is
    removed and DownloadError raised; a ``.part`` left by a process that was
    killed outright is resumed (HTTP Range) or restarted.
    """
    dest = os.fspath(dest)
    part = dest + ".part"
    folder = os.path.dirname(os.path.abspath(dest))
    made = not os.path.isdir(folder)     # a failed first download leaves no empty folder behind
    os.makedirs(folder, exist_ok=True)
    started = time.monotonic()
    try:
        return _transfer(url, dest, part, sha256, verify, progress, timeout, max_time, started, max_bytes)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)          # only if empty
        raise


def _transfer(url, dest, part, sha256, verify, progress, timeout, max_time, started, max_bytes=None):
    """download()'s body: the .part written, checked and renamed (see there)."""
    from ..progress import progress as progress_bar

    try:
        with removed_on_signal(part), open(part, "ab+") as f:
            _lock_part(f, part)
            have = f.seek(0, os.SEEK_END)
            h = hashlib.sha256()
            if have:   # a stale .part: hash what is there, then ask for the rest
                f.seek(0)
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            resp, ranged = _open_transfer(url, have, timeout)
            with resp:
                if not ranged and have:
                    f.truncate(0)
                    have, h = 0, hashlib.sha256()
                total = resp.headers.get("Content-Length")
                total = have + int(total) if total and total.isdigit() else None
                if max_bytes is not None and total is not None and total > max_bytes:
                    raise DownloadError(f"{dest}: {url} announces {total} bytes, more than the "
                                        f"{max_bytes} this checkpoint can hold; not downloaded")
                got = have
                with progress_bar(total=total, initial=have, unit="B", unit_scale=True,
                                  enabled=progress, desc=os.path.basename(dest)) as bar:
                    while True:
                        try:
                            # read1: whatever arrived, so a trickle cannot
                            # keep one read blocked past the deadline.
                            block = resp.read1(1 << 20)
                        except (socket.timeout, TimeoutError):
                            raise DownloadError(
                                f"{dest}: download from {url} stalled: no data for "
                                f"{timeout:g} s (the stall timeout)") from None
                        if not block:
                            break
                        f.write(block)
                        h.update(block)
                        got += len(block)
                        if max_bytes is not None and got > max_bytes:
                            raise DownloadError(f"{dest}: {url} sent more than the {max_bytes} bytes "
                                                f"this checkpoint can hold; refused after {got} bytes")
                        bar.update(len(block))
                        if time.monotonic() - started > max_time:
                            raise DownloadError(
                                f"{dest}: download from {url} took more than "
                                f"{max_time:g} s (the time limit); {got} bytes arrived")
            f.flush()
            if total is not None and got != total:
                raise DownloadError(
                    f"{dest}: download from {url} stopped after {got} of "
                    f"{total} bytes")
            digest = h.hexdigest()
            if sha256 is not None and digest != sha256:
                raise DownloadError(
                    f"{dest}: SHA-256 of the download from {url} is {digest}, "
                    f"expected {sha256}")
            if verify is not None:
                try:
                    verify(part)
                except CheckpointError as e:
                    raise DownloadError(
                        f"{dest}: the download from {url} is unusable: "
                        f"{str(e).replace(part + ': ', '')}") from None
            os.replace(part, dest)
        return digest
    except _PartBusy:
        raise
    except DownloadError:
        _remove(part)
        raise
    except (socket.timeout, TimeoutError):
        _remove(part)
        raise DownloadError(f"{dest}: download from {url} stalled: no answer for "
                            f"{timeout:g} s (the stall timeout)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError,
            ValueError) as e:
        _remove(part)
        raise DownloadError(f"{dest}: download from {url} failed: {e}") \
            from None
    except BaseException:
        _remove(part)
        raise


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
