"""The CLIP backbones of the pipeline: each loaded once, each image and each
prompt encoded once, through the feature cache.

``encode_backbones`` is what train.sh, test.sh and val.sh call: per backbone it
loads the model, encodes every image of the given path groups (one cache file
per group, so a group another command encoded before is read back), builds the
class weights of each name list from the prompts, and frees the model before
the next one.  An image that cannot be decoded gets a zero feature row (cached
like any other, so a re-run knows it is bad without decoding it again) and one
warning, whichever backbone or command found it.
"""
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.contest import ContestFormatError
from ..progress import progress

# a zero row marks an unreadable image (real features are unit length)
READABLE_NORM = 0.5


@contextmanager
def step(name: str, times: Dict[str, float]) -> Iterator[None]:
    """Print a step's start and its time; record the time (s) in ``times[name]``."""
    print(f"==> {name}", flush=True)
    t0 = time.time()
    yield
    times[name] = round(time.time() - t0, 2)
    print(f"    {name}: {times[name]:.1f} s", flush=True)


def load_backbone(spec, device: Optional[str]):
    """(model, preprocess) of one backbone section (``model``, ``weights``)."""
    import jclip
    return jclip.load(spec.weights, device=device)


def encode_files(model, preprocess, paths: Sequence[str], spec, cfg, desc: str = "images",
                 errors: Optional[Dict[str, str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Features of image files through the feature cache.

    Parameters: model, preprocess: a loaded backbone; paths: image files;
    spec: its backbone section; cfg: the configuration (batch_size, workers,
    cache_dir); desc: the progress bar's label; errors: collects
    ``{path: message}`` of files that could not be decoded (not printed here).
    Returns: (features (N, D) float32, readable (N,) bool); unreadable rows are zero.
    """
    from ..data.images import iter_batches
    from ..features.cache import encode_images_cached
    from ..features.encode import encode_images
    from ..models.load import weights_sha256
    bs = int(cfg.batch_size)
    paths = list(paths)
    dim = model.text_projection.shape[1]
    bar = None

    def encoder(chunk):
        nonlocal bar
        if bar is None:      # only when something is not in the cache
            bar = progress(total=len(paths), desc=f"encoding {desc}", unit="img")
        out = np.zeros((len(chunk), dim), np.float32)
        for idx, batch, errs in iter_batches(chunk, preprocess, bs, cfg.workers):
            if len(idx):
                out[idx] = encode_images(model, batch, bs)
            if errors is not None:
                errors.update(errs)
            bar.update(len(idx) + len(errs))
        return out

    try:
        if cfg.cache_dir:
            # chunks of several batches keep the loader's decode-ahead busy
            feats = encode_images_cached(paths, encoder, spec.model, weights_sha256(model),
                                         preprocess.id, cfg.cache_dir, batch_size=bs * 8,
                                         progress=False)
        else:
            feats = encoder(paths)
    finally:
        if bar is not None:
            bar.close()
    good = np.linalg.norm(feats, axis=1) > READABLE_NORM
    print(f"    {desc}: {int(good.sum())} of {len(paths)} images encoded", flush=True)
    return feats, good


def text_weights(model, names: Sequence[str], spec, cfg, templates: Optional[str] = None,
                 desc: str = "prompts") -> np.ndarray:
    """(C, D) zero-shot class weights of ``names`` from a template set (default the
    configuration's ``templates``), every prompt encoded once (cached)."""
    from ..features.cache import cached_text_encoder
    from ..features.encode import encode_texts
    from ..heads import class_prompts, text_classifier_weights
    from ..models.load import weights_sha256
    templates = templates or cfg.templates
    total = len(names) * len(class_prompts(names[0], templates, cfg.domain_suffix))
    bar = None

    def enc(texts):
        nonlocal bar
        if bar is None:      # only when something is not in the cache
            bar = progress(total=total, desc=f"encoding {desc}", unit="prompt")
        f = encode_texts(model, texts)
        bar.update(len(texts))
        return f

    cached = enc
    if cfg.cache_dir:
        cached = cached_text_encoder(enc, spec.model, weights_sha256(model), cfg.cache_dir,
                                     progress=False)
    try:
        return text_classifier_weights(names, cached, templates, cfg.domain_suffix)
    finally:
        if bar is not None:
            bar.close()


@dataclass
class Encoded:
    """What ``encode_backbones`` returns.

    features: {backbone key: (N, D)} over the concatenated path groups;
    readable: (N,) bool, False where any backbone could not decode the image;
    texts: {key: [(C, D) per name list and template set]} (name list major);
    sha256: {key: SHA-256 of the weights the backbone was loaded from}.
    """
    features: Dict[str, np.ndarray] = field(default_factory=dict)
    readable: np.ndarray = None
    texts: Dict[str, List[np.ndarray]] = field(default_factory=dict)
    sha256: Dict[str, str] = field(default_factory=dict)


def encode_backbones(cfg, keys: Sequence[str], path_groups: Sequence[Sequence[str]],
                     device: Optional[str], name_lists: Sequence[Sequence[str]] = (),
                     trained_sha256: Optional[Dict[str, str]] = None,
                     times: Optional[Dict[str, float]] = None,
                     templates: Optional[Sequence[str]] = None) -> Encoded:
    """Per CLIP backbone: features of the images in ``path_groups`` (lists of
    paths, concatenated) and class weights of each name list with each template
    set of ``templates`` (default the configuration's).

    Parameters: cfg: the configuration; keys: backbone keys; device: None |
    'cpu' | 'cuda'; trained_sha256: {key: SHA-256 its heads were trained on},
    checked before encoding; times: step times are recorded there.
    Returns: an ``Encoded``.  Each unreadable image is warned about once.
    """
    from ..models.load import weights_sha256
    times = {} if times is None else times
    n = sum(len(g) for g in path_groups)
    out = Encoded(readable=np.ones(n, bool))
    errors: Dict[str, str] = {}
    for key in keys:
        spec = cfg.backbones[key]
        with step(f"{key}: load {spec.weights}", times):
            model, pre = load_backbone(spec, device)
        out.sha256[key] = weights_sha256(model)
        want = (trained_sha256 or {}).get(key, out.sha256[key])
        if want != out.sha256[key]:
            raise ContestFormatError(f"{spec.weights}: not the weights the heads on {key} were "
                                     f"trained with (manifest {str(want)[:12]}...); run train.sh again")
        with step(f"{key}: encode {n} images", times):
            parts = [encode_files(model, pre, g, spec, cfg, key, errors) for g in path_groups if g]
            out.features[key] = np.concatenate([f for f, _ in parts])
            out.readable &= np.concatenate([ok for _, ok in parts])
        if name_lists:
            sets = list(templates or [cfg.templates])
            with step(f"{key}: text weights for {' + '.join(str(len(n)) for n in name_lists)} "
                      f"classes x {len(sets)} template set(s)", times):
                out.texts[key] = [text_weights(model, names, spec, cfg, t, f"{key} prompts ({t})")
                                  for names in name_lists for t in sets]
        del model
        import jittor as jt
        jt.gc()
    paths = [p for g in path_groups for p in g]
    for i in np.flatnonzero(~out.readable):
        why = errors.get(paths[i])
        print(f"warning: {paths[i]}: unreadable image" + (f" ({why.split(': ', 1)[-1]})" if why else ""),
              file=sys.stderr)
    return out


def relative_to(root: str, items: Sequence[Tuple[str, int]]) -> List[str]:
    """The paths of ``(path, label)`` items joined to ``root``."""
    return [os.path.join(root, p) for p, _ in items]
