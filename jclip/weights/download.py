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

_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
OPENAI_URLS = {
    "RN50": _OPENAI + "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": _OPENAI + "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": _OPENAI + "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": _OPENAI + "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": _OPENAI + "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": _OPENAI + "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": _OPENAI + "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": _OPENAI + "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": _OPENAI + "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
CONVNEXT_URLS = {
    "convnextv2_base": "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt",
}
MODEL_URLS = {**OPENAI_URLS, **CONVNEXT_URLS}
DEFAULT_MODELS = ("ViT-B/32", "RN101", "convnextv2_base")

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


def output_filename(name):
    """jclip weights file for a model: "ViT-B/32" -> "ViT-B-32.pkl";
    ConvNeXt keeps its release name ("convnextv2_base_1k_224_ema.pkl")."""
    if name in CONVNEXT_URLS:
        return os.path.splitext(source_filename(name))[0] + ".pkl"
    return name.replace("/", "-") + ".pkl"


def known_model_for_sha256(sha):
    """The OpenAI model whose published hash is ``sha``, or None."""
    return next((n for n, u in OPENAI_URLS.items()
                 if expected_sha256(u) == sha), None)


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
