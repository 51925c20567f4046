"""open_clip weights from the Hugging Face hub: the SHA-256 the hub
publishes and a verified download (the conversion is ``weights/convert.py``).

The hub stores large files with Git LFS, whose object id is the file's
SHA-256.  It states it in two places: the ``X-Linked-ETag`` header of the
file's ``resolve`` URL (the first answer, before the redirect to the CDN,
whose own ETag is not the SHA-256), and ``lfs.oid`` in the repository's tree
API (``/api/models/<repo>/tree/<revision>``).  A download is kept only when
its SHA-256 equals the one published; a file the hub states no SHA-256 for is
refused.  ``$JCLIP_HF_ENDPOINT`` replaces ``https://huggingface.co`` (a hub
mirror, or a local server in the tests).
"""
import json
import os
import re
import urllib.error
import urllib.request
from typing import Callable, Optional, Tuple

from ..catalog import HUB_FILES, ModelCard
from . import download as dl
from .checkpoint import sniff_format

ENDPOINT_ENV = "JCLIP_HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
REVISION = "main"


def endpoint() -> str:
    """The hub's base URL ($JCLIP_HF_ENDPOINT, else https://huggingface.co)."""
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def file_url(repo: str, filename: str, revision: str = REVISION) -> str:
    """The ``resolve`` URL of a file in a hub model repository."""
    return f"{endpoint()}/{repo}/resolve/{revision}/{filename}"


class _KeepFirstAnswer(urllib.request.HTTPRedirectHandler):
    """Do not follow the redirect to the CDN: the hash is in the hub's own answer."""

    def redirect_request(self, *args, **kwargs):
        return None


def _sha_from_etag(value: Optional[str]) -> Optional[str]:
    value = (value or "").strip()
    value = value[2:] if value.startswith("W/") else value
    value = value.strip('"').lower()
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _head(url: str, timeout: float):
    """(status, headers) of a HEAD request, redirects not followed."""
    opener = urllib.request.build_opener(_KeepFirstAnswer)
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as e:   # a 3xx not followed arrives here, with its headers
        return e.code, e.headers


def _tree_sha256(repo: str, filename: str, timeout: float, revision: str = REVISION) -> Optional[str]:
    """``lfs.oid`` of ``filename`` in the repository's tree listing, or None."""
    url = f"{endpoint()}/api/models/{repo}/tree/{revision}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            entries = json.loads(resp.read(1 << 22))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("path") == filename:
            lfs = entry.get("lfs") or {}
            return _sha_from_etag(lfs.get("oid") if isinstance(lfs, dict) else None)
    return None


def published_sha256(repo: str, filename: str, timeout: float = dl.STALL_TIMEOUT) -> Optional[str]:
    """The SHA-256 the hub publishes for ``repo``'s ``filename``; None when
    the hub has no such file (404).

    Raises DownloadError when the hub cannot be asked or states no SHA-256
    for a file it has (a file not in LFS, or an answer we do not recognise).
    """
    url = file_url(repo, filename)
    try:
        status, headers = _head(url, timeout)
    except (urllib.error.URLError, OSError) as e:
        raise dl.DownloadError(f"{url}: cannot ask the hub for the file's SHA-256 ({e})") from None
    if status == 404:
        return None
    if status >= 400:
        raise dl.DownloadError(f"{url}: the hub answered HTTP {status}")
    sha = _sha_from_etag(headers.get("X-Linked-ETag")) or _sha_from_etag(headers.get("ETag")) \
        or _tree_sha256(repo, filename, timeout)
    if sha is None:
        raise dl.DownloadError(f"{url}: the hub publishes no SHA-256 for this file "
                               "(no LFS object id), so it cannot be checked; not downloaded")
    return sha


def local_source(card: ModelCard, src_dir: str) -> Optional[str]:
    """A hub file already in ``src_dir/<weights stem>/`` (either of open_clip's names), or None."""
    for filename in HUB_FILES:
        path = os.path.join(src_dir, card.weights_stem, filename)
        if os.path.isfile(path):
            return path
    return None


def fetch(card: ModelCard, src_dir: str, progress: bool = True, timeout: float = dl.STALL_TIMEOUT,
          max_time: float = dl.MAX_TIME, log: Callable[..., None] = print) -> Tuple[str, str]:
    """Download ``card``'s open_clip file (safetensors first, as open_clip
    prefers, else the torch ``.bin``) into ``src_dir/<weights stem>/``,
    checked against the SHA-256 the hub publishes.

    Returns: (path, SHA-256).  Raises DownloadError (nothing kept) on a
    mismatch, a file the hub states no hash for, or neither file on the hub.
    """
    for filename in HUB_FILES:
        sha = published_sha256(card.hub, filename, timeout)
        if sha is None:
            continue
        url = file_url(card.hub, filename)
        dest = os.path.join(src_dir, card.weights_stem, filename)
        log(f"downloading {url} -> {dest} (SHA-256 published by the hub: {sha[:12]}...)")
        dl.download(url, dest, sha256=sha, verify=sniff_format, progress=progress,
                    timeout=timeout, max_time=max_time)
        return dest, sha
    raise dl.DownloadError(f"{card.name}: the hub repository {card.hub} has none of "
                           f"{', '.join(HUB_FILES)} (at {endpoint()})")
