"""open_clip weights through ``huggingface_hub``: the shared Hugging Face
cache, its endpoint, offline mode and token, and jclip's checks on top (the
conversion is ``weights/convert.py``; docs/open_clip.md says what each side
checks).

The library finds and fills the cache (``HF_HUB_CACHE`` / ``HF_HOME`` /
``~/.cache/huggingface/hub``), talks to ``HF_ENDPOINT`` with ``HF_TOKEN``,
stays off the network under ``HF_HUB_OFFLINE=1``, locks a file being
downloaded and retries a dropped transfer with a ranged request.  jclip adds:

* the SHA-256 the hub publishes (the LFS oid: the ``X-Linked-Etag`` of the
  file's ``resolve`` URL, which the library also names the cached blob by) is
  required, and the file is used only when its bytes hash to it;
* the size the hub announces must be one a checkpoint of the card's
  architecture can have, and a transfer is cut off at the first byte past it;
  the body of a redirect or an error answer is read to at most 64 KiB, and an
  error answer the library would parse as JSON is dropped unless it is a
  shallow JSON object (the library parses it unbounded);
* every failure is one DownloadError line.

jclip parses no JSON from the hub itself (no tree API).
"""
import contextlib
import contextvars
import hashlib
import json
import os
import re
import time
from typing import Callable, Optional, Tuple

from ..catalog import HUB_FILES, ModelCard
from ..json_depth import json_depth
from ..io import sha256_file
from . import download as dl

REVISION = "main"
LEGACY_ENDPOINT_ENV = "JCLIP_HF_ENDPOINT"   # read no more: HF_ENDPOINT is the one variable
SMALL_BODY = 64 << 10     # the most bytes read from a redirect or an error answer
MAX_JSON_DEPTH = 32       # an error answer nested deeper is dropped before the library parses it


class _Transfer:
    """What one jclip download allows: the announced size and SHA-256, the
    deadline and stall timeout; the bytes hashed so far (across ranged retries)."""

    def __init__(self, what: str, size: int, sha256: str, timeout: float, max_time: float):
        self.what, self.size, self.sha256, self.timeout = what, size, sha256, timeout
        self.max_time, self.deadline = max_time, time.monotonic() + max_time
        self.got, self.hash = 0, hashlib.sha256()


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jclip_hub_transfer", default=None)
_installed = False


def _check_deadline(t: _Transfer) -> None:
    if time.monotonic() > t.deadline:
        raise dl.DownloadError(f"{t.what}: download took more than {t.max_time:g} s (the time limit); "
                               f"{t.got} bytes arrived")


def _on_request(request) -> None:
    """Inside a jclip download: jclip's stall timeout for every read, and the deadline."""
    t = _ACTIVE.get()
    if t is not None:
        _check_deadline(t)
        request.extensions["timeout"] = {k: t.timeout for k in ("connect", "read", "write", "pool")}


def _small_body(raw: bytes) -> bytes:
    """An error answer's body as the library may read it: plain text kept, JSON
    only when it is a shallow object (a list, a scalar or a deep tree makes the
    library raise a traceback instead of its error)."""
    if json_depth(raw) > MAX_JSON_DEPTH:
        return b""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    return raw if isinstance(data, dict) else b""


def _on_response(response) -> None:
    """Inside a jclip download: the body of a GET's file answer is cut off past
    the announced size and hashed as it streams; any other body (redirect,
    error) is read to at most SMALL_BODY bytes."""
    import httpx2

    t = _ACTIVE.get()
    if t is None:
        return
    if response.request.method == "GET" and response.status_code in (200, 206):
        response.stream = _FileBody(response, t)
        return
    raw, stream = b"", response.stream
    try:
        for chunk in stream:
            raw += chunk
            if len(raw) > SMALL_BODY:
                break
    finally:
        stream.close()
    raw = raw[:SMALL_BODY]
    response.stream = httpx2.ByteStream(_small_body(raw) if response.status_code >= 400 else raw)


def _resume_offset(response) -> int:
    """Where a 206 answer's body starts (its Content-Range), else 0."""
    if response.status_code != 206:
        return 0
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    return int(m.group(1)) if m else -1


def _stream_class():
    import httpx2

    class FileBody(httpx2.SyncByteStream):
        """A file's body: refused at the first byte past the announced size, on
        the deadline, or at its end when its SHA-256 is not the published one;
        the library then removes its temporary file, so nothing unchecked
        enters the cache."""

        def __init__(self, response, t: _Transfer):
            self.inner, self.t = response.stream, t
            start = _resume_offset(response)
            if start == 0:                      # a whole body: hash from the start
                t.got, t.hash = 0, hashlib.sha256()
            elif start != t.got:
                raise dl.DownloadError(f"{t.what}: the server resumed at byte {start}, not at {t.got}; refused")

        def __iter__(self):
            t = self.t
            for chunk in self.inner:
                if t.got + len(chunk) > t.size:
                    raise dl.DownloadError(
                        f"{t.what}: the server sent more than the {t.size} bytes the hub announced; "
                        f"refused after {t.got + len(chunk)} bytes")
                t.got += len(chunk)
                t.hash.update(chunk)
                _check_deadline(t)
                yield chunk
            if t.got == t.size and t.hash.hexdigest() != t.sha256:
                raise dl.DownloadError(f"{t.what}: SHA-256 of the download is {t.hash.hexdigest()}, "
                                       f"but the hub's LFS oid is {t.sha256}; refused (nothing kept)")

        def close(self):
            self.inner.close()

    return FileBody


_FileBody = None


def _install_hooks(hf) -> None:
    """Give the library a client with jclip's two hooks (inert outside a jclip
    download), built like the library's own: its request hooks, redirects
    followed, no client-wide timeout.  A client factory set earlier by the
    program is replaced (docs/open_clip.md)."""
    global _installed, _FileBody
    if _installed:
        return
    import httpx2

    _FileBody = _stream_class()
    base = hf.get_session()
    request_hooks = [h for h in base.event_hooks["request"] if h is not _on_request]

    def factory():
        return httpx2.Client(event_hooks={"request": [*request_hooks, _on_request], "response": [_on_response]},
                             follow_redirects=True, timeout=None)
    hf.set_client_factory(factory)
    _installed = True


# ------------------------------------------------------------------ helpers

def _library():
    """huggingface_hub, or one line saying how to get it."""
    if os.environ.get(LEGACY_ENDPOINT_ENV):
        raise dl.DownloadError(f"{LEGACY_ENDPOINT_ENV} is no longer read: set HF_ENDPOINT (huggingface_hub's "
                               "variable for a hub mirror) instead")
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (a submodule: the package loads it lazily)
    except ImportError:
        raise dl.DownloadError("open_clip weights need huggingface_hub: pip install -r requirements.txt") from None
    return huggingface_hub


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _sha256_of_blob(path: str) -> Optional[str]:
    """The LFS oid the library named a cached file's blob by (``blobs/<sha256>``), or None."""
    real = os.path.realpath(path)
    name, parent = os.path.basename(real), os.path.basename(os.path.dirname(real))
    return name if parent == "blobs" and re.fullmatch(r"[0-9a-f]{64}", name) else None


def _verified(path: str, oid: str, what: str, fresh: bool) -> str:
    sha = sha256_file(path)
    if sha != oid:
        hint = "" if fresh else " (delete it from the Hugging Face cache to download it again)"
        raise dl.DownloadError(f"{path}: SHA-256 is {sha}, but the hub's LFS oid for {what} is {oid}; "
                               f"refused{hint}")
    return sha


def _from_cache(hf, card: ModelCard, reason: str, log) -> Tuple[str, str]:
    """The file already in the Hugging Face cache, checked against the oid its blob is named by."""
    for filename in HUB_FILES:
        path = hf.try_to_load_from_cache(card.hub, filename, revision=REVISION)
        if isinstance(path, str):
            what = f"{card.hub}/{filename}"
            oid = _sha256_of_blob(path)
            if oid is None:
                raise dl.DownloadError(f"{path}: the cache does not name this file's blob by its SHA-256 "
                                       f"(a copy, not a link to blobs/<sha256>), so it cannot be checked {reason}")
            log(f"{what}: in the Hugging Face cache ({path})")
            return path, _verified(path, oid, what, fresh=False)
    raise dl.DownloadError(f"{card.name}: {reason}, and the Hugging Face cache ({hf.constants.HF_HUB_CACHE}) "
                           f"holds neither {' nor '.join(HUB_FILES)} of {card.hub}")


def _metadata(hf, card: ModelCard, filename: str, timeout: float):
    """The hub's metadata of one file; None when the hub has no such file."""
    from huggingface_hub import errors

    url = hf.hf_hub_url(card.hub, filename, revision=REVISION)
    try:
        return hf.get_hf_file_metadata(url, timeout=timeout)
    except errors.RemoteEntryNotFoundError:
        return None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 404 and not isinstance(e, errors.RepositoryNotFoundError):
            return None
        why = " (not found, private or gated: HF_TOKEN sets the token)" if status in (401, 403, 404) else ""
        raise dl.DownloadError(f"{url}: the hub answered HTTP {status}{why}") from None


def _announced(card: ModelCard, meta, what: str) -> Tuple[str, int]:
    """(SHA-256, size) the hub announces, refused unless both are there and the size fits the card."""
    oid = (meta.etag or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", oid):
        raise dl.DownloadError(f"{what}: the hub publishes no SHA-256 for this file (no LFS object id), "
                               "so it cannot be checked; not downloaded")
    if meta.size is None:
        raise dl.DownloadError(f"{what}: the hub announces no size for this file; not downloaded")
    limit = dl.size_limit(card)
    if limit is not None and meta.size > limit:
        raise dl.DownloadError(f"{what}: the hub announces {meta.size} bytes, more than a {card.name} "
                               f"checkpoint can hold ({limit}); not downloaded")
    return oid, meta.size


@contextlib.contextmanager
def _transfer(t: _Transfer):
    token = _ACTIVE.set(t)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _download(hf, card: ModelCard, filename: str, oid: str, size: int, progress: bool,
              timeout: float, max_time: float, log) -> Tuple[str, str]:
    from ..progress import progress as bar

    what = f"{card.hub}/{filename}"
    cached = hf.try_to_load_from_cache(card.hub, filename, revision=REVISION)
    if not isinstance(cached, str):
        log(f"downloading {what} into the Hugging Face cache ({hf.constants.HF_HUB_CACHE}; "
            f"SHA-256 published by the hub: {oid[:12]}...)")
    _install_hooks(hf)

    def bar_for(**kw):   # the library's progress bar, drawn by jclip.progress
        return bar(total=kw.get("total"), initial=kw.get("initial", 0), desc=filename, unit="B",
                   unit_scale=True, enabled=progress)
    try:
        with _transfer(_Transfer(what, size, oid, timeout, max_time)):
            path = hf.hf_hub_download(card.hub, filename, revision=REVISION, etag_timeout=timeout,
                                      tqdm_class=bar_for)
    except dl.DownloadError:
        raise
    except Exception as e:   # the library's errors: HTTP, connection, consistency, disk
        raise dl.DownloadError(f"{what}: download failed: {_first_line(e)}") from None
    return path, _verified(path, oid, what, fresh=not isinstance(cached, str))


# ------------------------------------------------------------------ public

def local_source(card: ModelCard, src_dir: str) -> Optional[str]:
    """A hub file put by hand in ``src_dir/<weights stem>/`` (either of open_clip's names), or None."""
    for filename in HUB_FILES:
        path = os.path.join(src_dir, card.weights_stem, filename)
        if os.path.isfile(path):
            return path
    return None


def fetch(card: ModelCard, progress: bool = True, timeout: float = dl.STALL_TIMEOUT,
          max_time: float = dl.MAX_TIME, log: Callable[..., None] = print,
          allow_download: bool = True) -> Tuple[str, str]:
    """``card``'s open_clip file (safetensors first, as open_clip prefers, else
    the torch ``.bin``) in the Hugging Face cache, downloaded there when it is
    missing, checked against the SHA-256 the hub publishes.

    Offline (``HF_HUB_OFFLINE=1``, ``allow_download=False``, or the hub not
    reachable) only the cache is used, checked against the oid its blob is
    named by.  Returns (path in the cache, SHA-256); raises DownloadError (one
    line) otherwise.
    """
    hf = _library()
    import httpx2

    if not allow_download:
        return _from_cache(hf, card, "--no-download given", log)
    if hf.constants.is_offline_mode():
        return _from_cache(hf, card, "HF_HUB_OFFLINE is set", log)
    for filename in HUB_FILES:
        try:
            meta = _metadata(hf, card, filename, timeout)
        except (OSError, httpx2.HTTPError) as e:   # refused, timed out, offline: the cache may still serve
            return _from_cache(hf, card, f"the hub at {hf.constants.ENDPOINT} cannot be reached "
                               f"({_first_line(e)})", log)
        if meta is None:
            continue
        oid, size = _announced(card, meta, f"{card.hub}/{filename}")
        return _download(hf, card, filename, oid, size, progress, timeout, max_time, log)
    raise dl.DownloadError(f"{card.name}: the hub repository {card.hub} has none of "
                           f"{', '.join(HUB_FILES)} (at {hf.constants.ENDPOINT})")
