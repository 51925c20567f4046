"""The official checkpoints: where they live, what they are called, and a
verified download.

OpenAI publishes each CLIP checkpoint's SHA-256 as a path component of its
URL (openai/CLIP, clip/clip.py ``_MODELS``); the ConvNeXt-V2 release
(facebookresearch/ConvNeXt-V2 README) publishes none, so for it we record the
hash we computed.
"""
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request

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


def model_urls():
    urls = dict(MODEL_URLS)
    override = os.environ.get(URLS_ENV)
    if override:
        try:
            extra = json.loads(override)
        except ValueError as e:
            raise ValueError(f"{URLS_ENV} is not valid JSON: {e}") from None
        urls.update(extra)
    return urls


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


def download(url, dest, sha256=None, verify=None, progress=True, timeout=60):
    """Fetch ``url`` to ``dest`` through ``dest + ".part"``; returns the
    file's SHA-256.  The ``.part`` is renamed only after the whole body
    arrived, matched ``sha256`` (when given) and passed ``verify(part_path)``
    (when given; it raises CheckpointError to reject, e.g. an HTML error
    page).  On any failure the ``.part`` is removed and DownloadError is
    raised."""
    from tqdm import tqdm

    dest = os.fspath(dest)
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, \
                open(part, "wb") as f:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True,
                      unit_divisor=1024, disable=not progress,
                      desc=os.path.basename(dest)) as bar:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
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
    except DownloadError:
        _remove(part)
        raise
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
