"""Conversion into jclip weights: a checkpoint file, or a named model's
original fetched first (OpenAI's and ConvNeXt-V2's by URL, open_clip's from
the Hugging Face hub), skipped when the output is up to date.

What ``convert.py`` runs.  The state dict is checked against the layout its
keys show (``jclip.catalog.prepare_state_dict``) before anything is written;
on any error nothing is left at the output.
"""
import os
from typing import Callable, Optional

from ..catalog import (StateDictError, cards, get_card, open_clip_card, prepare_state_dict, state_dict_layout,
                       unbuildable_reason)
from ..catalog import sources
from ..io import sha256_file
from . import download as dl
from . import hub
from .checkpoint import (FORMAT_VERSION, CheckpointError, format_for_path, read_meta, read_state_dict,
                         save_state_dict, sniff_format)

Log = Callable[..., None]


def is_up_to_date(out, source_sha256, dtype="float32", fmt=None):
    """True when ``out`` is a readable jclip file converted from a source
    with this SHA-256, in this dtype, by this format version, in the format
    ``fmt`` (default: the one :func:`format_for_path` gives ``out``)."""
    meta = read_meta(out) if os.path.isfile(out) else None
    want = "safetensors" if format_for_path(out, fmt) == "safetensors" else "pickle"
    return bool(meta) and meta.get("source_sha256") == source_sha256 and \
        meta.get("dtype") == dtype and \
        meta.get("format_version") == FORMAT_VERSION and \
        sniff_format(out)[0] == want


def convert_checkpoint(src, out, model=None, dtype="float32", source_sha256=None, fmt=None,
                       check_name=True):
    """Convert the checkpoint ``src`` into the jclip file ``out``; returns the
    meta written.  ``model`` names the model in the meta (default: the source
    file's stem, or the model recorded in a jclip source); ``fmt`` as for
    ``save_state_dict``.  On any error (unreadable, hostile, NaN/Inf,
    unknown architecture, a tensor that does not fit) nothing is left at ``out``.
    check_name: a ``model`` the catalogue knows must have its card's layout
    (``check_fits_card``); named downloads pass False, their identity being
    the hash they were fetched and checked by."""
    src, out = os.fspath(src), os.fspath(out)
    sha = source_sha256 or sha256_file(src)
    state_dict, src_meta = read_state_dict(src)
    try:
        arch, state_dict = prepare_state_dict(state_dict, src)
    except StateDictError as e:
        raise CheckpointError(str(e)) from None
    if model is not None and check_name:
        check_fits_card(state_dict, model, src)
    meta = {
        "model": model or src_meta.get("model") or os.path.splitext(os.path.basename(src))[0],
        "architecture": arch,
        "source_file": os.path.basename(src),
        "source_sha256": sha,
        "source_format": src_meta["format"],
    }
    try:
        return save_state_dict(out, state_dict, meta, dtype=dtype, fmt=fmt)
    except ValueError as e:   # e.g. a value overflowing float16
        raise CheckpointError(f"{src}: {e}") from None


def check_fits_card(state_dict, name, src) -> None:
    """CheckpointError naming ``src`` and the first tensor when ``name`` is a
    model the catalogue knows and the state dict is not its layout (another
    depth, width or head): identity is checked, not assumed."""
    try:
        card = get_card(name)
    except KeyError:
        return                                   # a free name ("tiny"): nothing to check against
    if card.architecture is None:
        return
    head = state_dict.get("head.weight")
    layout = state_dict_layout(card.architecture, int(head.shape[0]) if head is not None else 0) \
        if card.family == "convnextv2" else state_dict_layout(card.architecture)
    for key, shape in layout.items():
        if key not in state_dict:
            raise CheckpointError(f"{src}: does not fit {name}: no {key} (is it a {name} checkpoint?)")
        if tuple(state_dict[key].shape) != tuple(shape):
            raise CheckpointError(f"{src}: does not fit {name}: {key} has shape {tuple(state_dict[key].shape)}, "
                                  f"{name} has {tuple(shape)}")
    extra = [k for k in state_dict if k not in layout]
    if extra:
        raise CheckpointError(f"{src}: does not fit {name}: {extra[0]} is not a tensor of {name}")


def convert_one(src, out, model, dtype, force, expected_sha=None, log: Log = print, fmt=None):
    """Convert src -> out unless out is up to date; returns "skipped" or "converted"."""
    sha = sha256_file(src)
    if expected_sha is not None and sha != expected_sha:
        raise CheckpointError(
            f"{src}: SHA-256 is {sha}, expected {expected_sha} (a corrupt or "
            "different file): delete it to download it again, or, offline, convert "
            f"this very file on its own: python convert.py {src} --out FILE")
    return _convert_unless_current(src, out, sha, model, dtype, force, fmt, log, os.path.basename(src))


def _convert_unless_current(src, out, sha, model, dtype, force, fmt, log: Log, shown: str):
    """convert_checkpoint(src -> out) unless ``out`` is up to date for ``sha``
    (``shown`` names the source in the message); "skipped" or "converted"."""
    if not force and is_up_to_date(out, sha, dtype, fmt):
        log(f"{out}: up to date (source {shown}, sha256 {sha[:12]}...)")
        return "skipped"
    log(f"{src} -> {out} ({dtype})")
    convert_checkpoint(src, out, model=model, dtype=dtype, source_sha256=sha, fmt=fmt, check_name=False)
    return "converted"


def is_open_clip_name(name: str) -> bool:
    """True for an open_clip name: one jclip knows, or one whose architecture
    it refuses (``convert_model`` then says why)."""
    return open_clip_card(name) is not None or unbuildable_reason(name) is not None


def model_name_problem(name: str) -> Optional[str]:
    """Why ``convert_model(name, ...)`` cannot convert ``name`` (an unknown
    name, an architecture jclip refuses), or None: checked for every name
    before any work starts."""
    if open_clip_card(name) is not None:
        return None
    reason = unbuildable_reason(name)
    if reason is not None:
        return reason
    try:
        sources.model_source(name)
    except KeyError:
        return f"{name}: unknown model; known: {', '.join(sources.model_urls())}"
    return None


def _up_to_date_offline(out: str, dtype: str, force: bool, ok: Callable[[dict], bool], log: Log) -> bool:
    """An up-to-date output needs no original (checked by ``ok`` on its meta)."""
    meta = read_meta(out) if not force else None
    if meta and meta.get("dtype") == dtype and ok(meta):
        log(f"{out}: up to date")
        return True
    return False


def _convert_open_clip(name, src_dir, out_dir, dtype, force, allow_download, progress, log, fmt,
                       timeout, max_time):
    """convert_model's step for an open_clip model ("ViT-B-32/laion2b_s34b_b79k"):
    a hub file put in ``src_dir`` by hand, else the one in the Hugging Face
    cache (downloaded there when missing and allowed; nothing is copied into
    ``src_dir``), checked against the SHA-256 the hub publishes."""
    card = open_clip_card(name)
    if card is None:
        raise CheckpointError(unbuildable_reason(name) or f"{name}: not an open_clip model jclip knows")
    out = os.path.join(out_dir, card.weights_filename(fmt))
    src = hub.local_source(card, src_dir)
    if src is None:
        # Offline the hub's hash is not known, so the model recorded in the output is what counts.
        if _up_to_date_offline(out, dtype, force, lambda m: m.get("model") == name, log):
            return "skipped"
        src, sha = hub.fetch(card, progress, timeout, max_time, log, allow_download=allow_download)
    else:
        sha = sha256_file(src)
    return _convert_unless_current(src, out, sha, name, dtype, force, fmt, log, src)


def convert_model(name, src_dir, out_dir, dtype, force=False, allow_download=True, progress=True,
                  log: Log = print, fmt="safetensors", timeout=dl.STALL_TIMEOUT, max_time=dl.MAX_TIME):
    """Make out_dir/<weights> for a named model, fetching the original into
    src_dir first when it is missing.  The original is checked against the
    model card's published SHA-256 whatever URL it comes from (the hub's for
    open_clip's).  Returns "skipped" or "converted"; raises CheckpointError
    (DownloadError) naming the file otherwise."""
    if is_open_clip_name(name):
        return _convert_open_clip(name, src_dir, out_dir, dtype, force, allow_download, progress, log, fmt,
                                  timeout, max_time)
    try:
        url, expected = sources.model_source(name)
    except KeyError:
        raise CheckpointError(f"{name}: unknown model; known: {', '.join(sources.model_urls())}") from None
    src = os.path.join(src_dir, sources.source_filename(name, url))
    out = os.path.join(out_dir, sources.output_filename(name, fmt))
    if not os.path.isfile(src):
        # OpenAI's by its published hash; ConvNeXt (no published hash) by the model recorded in it.
        def ok(meta):
            return meta.get("source_sha256") == expected if expected else meta.get("model") == name
        if _up_to_date_offline(out, dtype, force, ok, log):
            return "skipped"
        if not allow_download:
            raise CheckpointError(f"{src}: missing (and --no-download given)")
        log(f"downloading {url} -> {src}")
        # Without a published hash, at least refuse an error page or a truncated archive before keeping it.
        card = cards().get(name)
        dl.download(url, src, sha256=expected, verify=sniff_format, progress=progress, timeout=timeout,
                    max_time=max_time, max_bytes=dl.size_limit(card) if card else None)
    return convert_one(src, out, name, dtype, force, expected, log)
