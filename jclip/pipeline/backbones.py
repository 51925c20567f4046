"""The CLIP backbones of the pipeline: each loaded once, each image and each
prompt encoded once, through the feature cache.

``encode_backbones`` is what train.sh, test.sh and val.sh call: it loads the
backbones, encodes every image of the given path groups (one cache file per
group and backbone, so a group another command encoded before is read back;
backbones with one preprocessing decode each image once for all of them),
builds the class weights of each name list from the prompts, and frees the
models.  An image that cannot be decoded gets a zero feature row (cached like
any other, so a re-run knows it is bad without decoding it again) and one
warning, whichever backbone or command found it.

Under mpirun (``jclip.distributed``) every rank runs the same calls: each
encodes an equal contiguous shard of each list, cut at batch boundaries, and
rank 0 gathers the rows, keeps the cache and gets the features; the result
is byte-identical to one process.
"""
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import distributed
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


@dataclass
class LoadedBackbone:
    """A CLIP backbone the pipeline loaded: its key, model, preprocessing,
    ``BackboneSpec`` (the configuration's entry) and weights SHA-256."""
    key: str
    model: Any
    preprocess: Any
    spec: Any
    sha256: str

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1])


def _image_encoder(backbones: Sequence[LoadedBackbone], cfg, total: int, desc: str, errors: Dict[str, str]):
    """(encode, close): encode(paths) -> (n, sum of widths) features of every
    backbone side by side, each image decoded once (the backbones share a
    preprocessing); unreadable rows stay zero and their messages go to
    ``errors``.  The progress bar (rank 0 only) counts images."""
    from ..data.images import iter_batches
    from ..features.encode import encode_images
    bs = int(cfg.batch_size)
    bar = None

    def encode(chunk: List[str]) -> np.ndarray:
        nonlocal bar
        if bar is None:      # only when something is not in the cache
            mine = total if distributed.world_size() == 1 else len(chunk)
            bar = progress(total=mine, desc=f"encoding {desc}" + (
                f" ({distributed.where()})" if distributed.world_size() > 1 else ""),
                unit="img", enabled=distributed.is_root())
        out = np.zeros((len(chunk), sum(t.dim for t in backbones)), np.float32)
        for idx, batch, errs in iter_batches(chunk, backbones[0].preprocess, bs, cfg.workers):
            if len(idx):
                out[idx] = np.concatenate([encode_images(t.model, batch, bs) for t in backbones], axis=1)
            errors.update(errs)
            bar.update(len(idx) + len(errs))
        return out

    return encode, lambda: bar is not None and bar.close()


def _cached_images(backbone: LoadedBackbone, paths: List[str], cfg, encoder: Callable) -> np.ndarray:
    """Rank 0: ``backbone``'s features of ``paths`` through the feature cache
    (``encoder`` encodes what it lacks)."""
    from ..features.cache import encode_images_cached
    if not cfg.cache_dir:
        return encoder(paths)
    # chunks of several batches keep the loader's decode-ahead busy; under
    # mpirun one chunk, so each rank takes one contiguous shard of the list
    chunk = int(cfg.batch_size) * 8 if distributed.world_size() == 1 else max(1, len(paths))
    return encode_images_cached(paths, encoder, backbone.spec.model, backbone.sha256, backbone.preprocess.id,
                                cfg.cache_dir, batch_size=chunk, progress=False)


def encode_files(backbones: Sequence[LoadedBackbone], paths: Sequence[str], cfg, desc: str = "images",
                 errors: Optional[Dict[str, str]] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Features of image files on backbones that share a preprocessing, each image
    decoded once for all of them, through the feature cache.

    Under mpirun every rank calls this with the same arguments: each encodes an
    equal contiguous shard (cut at batch boundaries, so every forward pass sees
    the batch one process would) and rank 0 gets the rows and keeps the cache.

    Parameters: backbones: loaded backbones with one ``preprocess.id``; paths:
    image files; cfg: the configuration (batch_size, workers, cache_dir);
    desc: the progress bar's label; errors: collects ``{path: message}`` of
    files that could not be decoded (not printed here).
    Returns: on rank 0 {key: (features (N, D) float32, readable (N,) bool)},
    unreadable rows zero; on the other ranks {}.
    """
    paths = list(paths)
    errors = {} if errors is None else errors
    mine: Dict[str, str] = {}
    encode_all, close_all = _image_encoder(backbones, cfg, len(paths), desc, mine)
    bs = int(cfg.batch_size)
    stash: Dict[str, Dict[str, np.ndarray]] = {t.key: {} for t in backbones[1:]}
    feats: Dict[str, np.ndarray] = {}

    def lead(encoder):
        def both(chunk):
            rows = np.asarray(encoder(chunk))
            cut = np.cumsum([t.dim for t in backbones])[:-1]
            for t, part in zip(backbones[1:], np.split(rows, cut, axis=1)[1:]):
                stash[t.key].update(zip(chunk, part))
            return rows[:, :backbones[0].dim]
        return _cached_images(backbones[0], paths, cfg, both)

    try:
        feats[backbones[0].key] = distributed.drive(lead, encode_all, unit=bs)
        for t in backbones[1:]:
            # the lead's pass encoded these too; encode afresh what it did not
            encode_one, close_one = _image_encoder([t], cfg, len(paths), desc, mine)
            try:
                feats[t.key] = distributed.drive(
                    lambda enc, t=t: _cached_images(t, paths, cfg, lambda chunk: (
                        np.stack([stash[t.key][p] for p in chunk]) if all(p in stash[t.key] for p in chunk)
                        else enc(chunk))), encode_one, unit=bs)
            finally:
                close_one()
    finally:
        close_all()
    for part in distributed.allgather_object(sorted(mine.items())):
        errors.update(dict(part))
    if not distributed.is_root():
        return {}
    out = {}
    for t in backbones:
        good = np.linalg.norm(feats[t.key], axis=1) > READABLE_NORM
        print(f"    {t.key}: {int(good.sum())} of {len(paths)} images encoded", flush=True)
        out[t.key] = (feats[t.key], good)
    return out


def text_weights(backbone: LoadedBackbone, names: Sequence[str], cfg, templates: Optional[str] = None,
                 desc: str = "prompts") -> Optional[np.ndarray]:
    """(C, D) zero-shot class weights of ``names`` from a template set (default the
    configuration's ``templates``), every prompt encoded once (cached per prompt).

    Each class's prompts go through the text tower as one batch: a prompt's
    features then do not depend on the other classes of the list, on what the
    cache already held or on the number of ranks (the kernels' sums depend on
    the batch), so test.sh can reuse train.sh's prompts and stay byte-identical.
    Under mpirun every rank calls this: the prompts to encode are split over
    the ranks in whole classes; rank 0 gets the weights, the others None.
    """
    from ..features.cache import cached_text_encoder
    from ..features.encode import TEXT_BATCH, encode_texts
    from ..heads import class_prompts, text_classifier_weights
    templates = templates or cfg.templates
    per = len(class_prompts(names[0], templates, cfg.domain_suffix))
    total = len(names) * per
    bar = None

    def enc(texts):
        nonlocal bar
        if bar is None:      # only when something is not in the cache
            bar = progress(total=total if distributed.world_size() == 1 else len(texts),
                           desc=f"encoding {desc}", unit="prompt", enabled=distributed.is_root())
        out = []
        for i in range(0, len(texts), per):
            out.append(encode_texts(backbone.model, texts[i:i + per], per))
            bar.update(len(out[-1]))
        return np.concatenate(out)

    encoded = []

    def run(sharded_encoder):
        def encoder(texts):
            encoded.append(len(texts))
            return sharded_encoder(texts)
        if cfg.cache_dir:
            # whole classes per chunk; under mpirun one chunk, split over the ranks
            chunk = per * max(1, TEXT_BATCH // per) if distributed.world_size() == 1 else max(1, total)
            encoder = cached_text_encoder(encoder, backbone.spec.model, backbone.sha256, cfg.cache_dir,
                                          batch_size=chunk, progress=False)
        return text_classifier_weights(names, encoder, templates, cfg.domain_suffix)

    try:
        weights = distributed.drive(run, enc, unit=per)
    finally:
        if bar is not None:
            bar.close()
    if distributed.is_root():
        print(f"    {backbone.key}: {sum(encoded)} of {total} prompts encoded "
              f"({total - sum(encoded)} from the cache)", flush=True)
    return weights


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


def load_backbones(cfg, keys: Sequence[str], device: Optional[str],
                trained_sha256: Optional[Dict[str, str]] = None,
                times: Optional[Dict[str, float]] = None) -> List[LoadedBackbone]:
    """Load each backbone of ``keys``; refuse weights other than those its heads
    were trained with (``trained_sha256`` {key: SHA-256})."""
    from ..models.load import weights_sha256
    backbones = []
    for key in keys:
        spec = cfg.backbones[key]
        with step(f"{key}: load {spec.weights}", {} if times is None else times):
            model, pre = load_backbone(spec, device)
        backbone = LoadedBackbone(key, model, pre, spec, weights_sha256(model))
        want = (trained_sha256 or {}).get(key, backbone.sha256)
        if want != backbone.sha256:
            raise ContestFormatError(f"{spec.weights}: not the weights the heads on {key} were "
                                     f"trained with (manifest {str(want)[:12]}...); run train.sh again")
        backbones.append(backbone)
    return backbones


def encode_backbones(cfg, keys: Sequence[str], path_groups: Sequence[Sequence[str]],
                     device: Optional[str], name_lists: Sequence[Sequence[str]] = (),
                     trained_sha256: Optional[Dict[str, str]] = None,
                     times: Optional[Dict[str, float]] = None,
                     templates: Optional[Sequence[str]] = None,
                     features: Optional[Dict[str, str]] = None) -> Encoded:
    """Per CLIP backbone: features of the images in ``path_groups`` (lists of
    paths, concatenated) and class weights of each name list with each template
    set of ``templates`` (default the configuration's).

    The backbones are loaded together; those that share a preprocessing
    (ViT-B/32 and RN101: OpenAI's 224 px) decode each image once for all.  Under
    mpirun every rank calls this and encodes its shard; rank 0 gets everything.

    Parameters: cfg: the configuration; keys: backbone keys; device: None |
    'cpu' | 'cuda'; trained_sha256: {key: SHA-256 its heads were trained on},
    checked before encoding; times: step times are recorded there;
    features: {key: folder of ``jclip.extract``} whose rows replace encoding
    (the folder must hold every image, from the same weights and preprocessing).
    Returns: an ``Encoded`` (on rank 0: under mpirun the other ranks exit at
    the end, see ``distributed.leave``).  Each unreadable image is warned about once.
    """
    times = {} if times is None else times
    n = sum(len(g) for g in path_groups)
    out = Encoded(readable=np.ones(n, bool))
    errors: Dict[str, str] = {}
    loaded = load_backbones(cfg, keys, device, trained_sha256, times)
    out.sha256.update({t.key: t.sha256 for t in loaded})
    given = {t.key: t for t in loaded if t.key in (features or {})}
    for key, t in given.items():
        with step(f"{key}: {n} images from {features[key]}", times):
            if distributed.is_root():
                out.features[key], ok = precomputed(t, features[key], [p for g in path_groups for p in g])
                out.readable &= ok
    # backbones with one preprocessing share each image's decode
    groups: Dict[str, List[LoadedBackbone]] = {}
    for t in loaded:
        if t.key not in given:
            groups.setdefault(t.preprocess.id, []).append(t)
    for backbones in groups.values():
        group = [t.key for t in backbones]
        with step(f"{' + '.join(group)}: encode {n} images" + (" (decoded once)" if len(backbones) > 1 else ""),
                  times):
            parts = [encode_files(backbones, g, cfg, "+".join(group), errors) for g in path_groups if g]
            if distributed.is_root():
                for key in group:
                    out.features[key] = np.concatenate([p[key][0] for p in parts])
                    out.readable &= np.concatenate([p[key][1] for p in parts])
    if name_lists:
        sets = list(templates or [cfg.templates])
        for t in loaded:
            with step(f"{t.key}: text weights for {' + '.join(str(len(n)) for n in name_lists)} "
                      f"classes x {len(sets)} template set(s)", times):
                out.texts[t.key] = [text_weights(t, names, cfg, s, f"{t.key} prompts ({s})")
                                    for names in name_lists for s in sets]
    del loaded, groups
    import jittor as jt
    jt.gc()
    distributed.leave()       # under mpirun: the other ranks end here, rank 0 goes on alone
    paths = [p for g in path_groups for p in g]
    for i in np.flatnonzero(~out.readable):
        why = errors.get(paths[i]) or errors.get(os.path.abspath(paths[i]))
        print(f"warning: {paths[i]}: unreadable image" + (f" ({why.split(': ', 1)[-1]})" if why else ""),
              file=sys.stderr)
    return out


def precomputed(backbone: LoadedBackbone, folder: str, paths: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(features, readable) of ``paths`` from a ``jclip.extract`` folder, refused
    (FeaturesError naming the folder) unless it holds them from ``backbone``'s
    weights and preprocessing."""
    from ..extract import load_features_for
    return load_features_for(folder, backbone.sha256, backbone.preprocess.id,
                             f"backbone {backbone.key}").rows(paths)


def relative_to(root: str, items: Sequence[Tuple[str, int]]) -> List[str]:
    """The paths of ``(path, label)`` items joined to ``root``."""
    return [os.path.join(root, p) for p, _ in items]
