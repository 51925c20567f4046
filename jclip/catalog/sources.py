"""Where each model's original checkpoint comes from and what it must hash to.

The cards' official URLs, overridden per model by ``$JCLIP_MODEL_URLS`` (a
mirror, or a local server in the tests), and the SHA-256 a download must
have: the card's published one whatever URL it comes from (a mirror never
switches the check off).  OpenAI publishes each CLIP checkpoint's SHA-256 as
a path component of its URL; the ConvNeXt-V2 release publishes none (the
converter records the hash it computed).
"""
import json
import os
import re
from typing import Dict, Optional, Tuple

from .store import tables

# JSON {model name: url} or {model: {"url": ..., "sha256": ...}} merged over the cards' URLs.
URLS_ENV = "JCLIP_MODEL_URLS"


def _overrides() -> Dict[str, object]:
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


def model_urls() -> Dict[str, str]:
    """{model: url}: the cards' official URLs, overridden by $JCLIP_MODEL_URLS."""
    urls = {n: c.url for n, c in tables().cards.items()}
    for name, entry in _overrides().items():
        urls[name] = entry.get("url") if isinstance(entry, dict) else entry
    return urls


def model_source(name: str) -> Tuple[str, Optional[str]]:
    """(url, sha256 or None) a model's original is fetched from and checked
    against.  A mirror URL keeps the card's published hash; only a mirror
    entry that states its own ``"sha256"`` replaces it (for a re-packaged
    file the user vouches for)."""
    entry = _overrides().get(name)
    if isinstance(entry, dict):
        url, sha = entry.get("url"), entry.get("sha256")
        if not isinstance(url, str) or (sha is not None and not (
                isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha))):
            raise ValueError(f"{URLS_ENV}: entry for {name} needs a \"url\" and, optionally, "
                             "a 64-hex-digit \"sha256\"")
        return url, sha or known_sha256(name, url)
    card = tables().cards.get(name)
    url = entry if isinstance(entry, str) else (card.url if card else None)
    if url is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_urls())}")
    return url, known_sha256(name, url)


def expected_sha256(url: str) -> Optional[str]:
    """The SHA-256 in an OpenAI-style URL (.../<sha256>/<file>), else None."""
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
        return parts[-2]
    return None


def known_sha256(name: str, url: Optional[str] = None) -> Optional[str]:
    """The SHA-256 a model's original must have: the card's published hash
    whatever URL it comes from, else the hash in an OpenAI-style ``url``, else None."""
    card = tables().cards.get(name)
    if card is not None and card.sha256:
        return card.sha256
    return expected_sha256(url) if url else None


def source_filename(name: str, url: Optional[str] = None) -> str:
    """The original's file name, e.g. "ViT-B-32.pt": the official URL's
    basename (so a hand-downloaded file is found), else ``url``'s."""
    card = tables().cards.get(name)
    url = card.url if card is not None else url
    if url is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_urls())}")
    return url.rsplit("/", 1)[-1]


def output_filename(name: str, fmt: str = "safetensors") -> str:
    """jclip weights file for a model: "ViT-B/32" -> "ViT-B-32.safetensors";
    ConvNeXt keeps its release name ("convnextv2_base_1k_224_ema.safetensors").
    ``fmt`` "pkl" gives the Jittor ``.pkl`` name; a model without a card gets
    its name with "/" replaced by "-"."""
    card = tables().cards.get(name)
    if card is not None:
        return card.weights_filename(fmt)
    return name.replace("/", "-") + "." + fmt
