"""The official checkpoints: where they live, what they are called, and a
verified download.

OpenAI publishes each CLIP checkpoint's SHA-256 as a path component of its
URL (openai/CLIP, clip/clip.py ``_MODELS``); the ConvNeXt-V2 release
(facebookresearch/ConvNeXt-V2 README) publishes none, so for it we record the
hash we computed.
"""
import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

from ..io import removed_on_signal
from .checkpoint import CheckpointError

from ..models.registry import CARDS, DEFAULT_MODELS, card_for_sha256, get_card  # noqa: F401

# Derived views of the registry's cards (kept for callers of the old tables).
OPENAI_URLS = {n: c.url for n, c in CARDS.items() if c.family == "clip"}
CONVNEXT_URLS = {n: c.url for n, c in CARDS.items() if c.family == "convnextv2"}
MODEL_URLS = {n: c.url for n, c in CARDS.items()}

# JSON {model name: url} merged over MODEL_URLS (tests point it at a local
# server; a mirror works the same way).
URLS_ENV = "JCLIP_MODEL_URLS"


class DownloadError(CheckpointError):
    """A download failed or did not match its checksum."""


def _overrides():
    """$JCLIP_MODEL_URLS: {model: url} or {model: {"url": ..., "sha256": ...}}."""
    override = os.environ.get(URLS_ENV)
    if not override:
        return {}
    try:
        extra = json.loads(override)
    except ValueError as e:
        raise ValueError(f"{URLS_ENV} is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise ValueError(f"{URLS_ENV} must be a JSON object {{model: url}}")
    return extra


def model_urls():
    """{model: url}: the cards' official URLs, overridden by $JCLIP_MODEL_URLS."""
    urls = dict(MODEL_URLS)
    for name, entry in _overrides().items():
        urls[name] = entry.get("url") if isinstance(entry, dict) else entry
    return urls


def model_source(name):
    """(url, sha256 or None) a model's original is fetched from and checked
    against.  A mirror URL keeps the card's published hash (a mirror never
    switches the check off); only a mirror entry that states its own
    ``"sha256"`` replaces it (for a re-packaged file the user vouches for)."""
    entry = _overrides().get(name)
    if isinstance(entry, dict):
        url, sha = entry.get("url"), entry.get("sha256")
        if not isinstance(url, str) or (sha is not None and not (
                isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha))):
            raise ValueError(f"{URLS_ENV}: entry for {name} needs a \"url\" and, optionally, "
                             "a 64-hex-digit \"sha256\"")
        return url, sha or known_sha256(name, url)
    url = entry if isinstance(entry, str) else MODEL_URLS.get(name)
    if url is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_urls())}")
    return url, known_sha256(name, url)


def expected_sha256(url):
    """The SHA-256 in an OpenAI-style URL (.../<sha256>/<file>), else None."""
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
        return parts[-2]
    return None


def source_filename(name, urls=None):
    """The original's file name, e.g. "ViT-B-32.pt" (the official URL's
    basename, so a hand-downloaded file is found)."""
    url = MODEL_URLS.get(name) or (urls or model_urls()).get(name)
    if url is None:
        raise KeyError(f"unknown model {name!r}; known: "
                       f"{', '.join(model_urls())}")
    return url.rsplit("/", 1)[-1]


def output_filename(name, fmt="safetensors"):
    """jclip weights file for a model: "ViT-B/32" -> "ViT-B-32.safetensors";
    ConvNeXt keeps its release name ("convnextv2_base_1k_224_ema.safetensors").
    ``fmt`` "pkl" gives the Jittor ``.pkl`` name; a model without a card gets
    its name with "/" replaced by "-"."""
    if name in CARDS:
        return CARDS[name].weights_filename(fmt)
    return name.replace("/", "-") + "." + fmt


def known_sha256(name, url=None):
    """The SHA-256 a model's original must have: the card's published hash
    whatever URL it comes from (a mirror does not switch the check off), else
    the hash in an OpenAI-style ``url``, else None."""
    card = CARDS.get(name)
    if card is not None and card.sha256:
        return card.sha256
    return expected_sha256(url) if url else None


def known_model_for_sha256(sha):
    """The model whose published hash is ``sha``, or None."""
    card = card_for_sha256(sha)
    return card.name if card else None


class _PartBusy(DownloadError):
    """The .part is another live process's: leave it alone."""


STALL_TIMEOUT = 60      # seconds without a byte before a download fails
MAX_TIME = 6 * 3600     # seconds a whole download may take


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
             timeout=STALL_TIMEOUT, max_time=MAX_TIME):
    """Fetch ``url`` to ``dest`` through ``dest + ".part"``; returns the
    file's SHA-256.

    The ``.part`` is renamed only after the whole body arrived, matched
    ``sha256`` (when given) and passed ``verify(part_path)`` (when given; it
    raises CheckpointError to reject, e.g. an HTML error page).  A transfer
    with no byte for ``timeout`` seconds, or longer than ``max_time`` seconds
    in all, fails.  On any failure, and on SIGTERM/SIGINT, the ``.part`` is
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
        return _transfer(url, dest, part, sha256, verify, progress, timeout, max_time, started)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)          # only if empty
        raise


def _transfer(url, dest, part, sha256, verify, progress, timeout, max_time, started):
    """download()'s body: the .part written, checked and renamed (see there)."""
    from tqdm import tqdm

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
                got = have
                with tqdm(total=total, initial=have, unit="B", unit_scale=True,
                          unit_divisor=1024, disable=not progress,
                          desc=os.path.basename(dest)) as bar:
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
