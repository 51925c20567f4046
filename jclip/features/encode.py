"""Batched CLIP encoding of image arrays, image files and prompts (normalised features)."""
from typing import List, Optional, Sequence, Tuple

import jittor as jt
import numpy as np

from ..data.images import Preprocess, iter_batches
from ..models.batching import run_in_slices
from ..models.clip import CLIP, normalize
from ..models.tokenizer import tokenize
from ..progress import progress as progress_bar

# prompts per text-encoder pass, and per chunk the prompt cache hands over
TEXT_BATCH = 256


def _encode(model, batch):
    """Normalised image features of one batch, sliced on CPU for conv towers."""
    return run_in_slices(lambda x: normalize(model.encode_image(x)), batch,
                         getattr(model.visual, "cpu_batch", None))


def encode_images(model: CLIP, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """L2-normalised image features of a preprocessed array, in batches.

    Parameters: ``model`` from ``jclip.load``; ``images`` (N, 3, S, S) float32
    from its preprocess; ``batch_size`` images per forward.
    Returns: (N, D) float32, unit rows.
    """
    out = []
    with jt.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(_encode(model, images[start:start + batch_size]))
            jt.gc()
    return np.concatenate(out) if out else np.zeros((0, model.text_projection.shape[1]), np.float32)


def encode_image_files(model: CLIP, paths: Sequence[str], preprocess: Preprocess,
                       batch_size: int = 64, workers: Optional[int] = None, strict: bool = False,
                       progress: bool = True, desc: str = "encoding images"
                       ) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """L2-normalised features of image files, decoded by a thread pool one
    batch ahead of the model.

    Parameters: ``preprocess`` the model's transform (from ``jclip.load``);
    ``workers`` decoding threads; ``strict`` raise ImageLoadError on an
    unreadable file instead of skipping it; ``progress`` / ``desc`` the bar.
    Returns: ``(features (N_ok, D) float32, ok, errors)``: ``ok`` are the
    indices of ``paths`` that ``features`` rows hold; unreadable files are
    listed in ``errors`` as ``(path, message)``.
    """
    paths = list(paths)
    feats, ok, errors = [], [], []
    bar = progress_bar(total=len(paths), desc=desc, unit="img", enabled=progress)
    with jt.no_grad():
        for idx, batch, errs in iter_batches(paths, preprocess, batch_size, workers, strict):
            if len(idx):
                feats.append(_encode(model, batch))
                jt.gc()
            ok += idx
            errors += errs
            for path, msg in errs:
                bar.write(f"warning: {msg}")
            bar.update(len(idx) + len(errs))
    bar.close()
    dim = model.text_projection.shape[1]
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), ok, errors


def encode_texts(model: CLIP, texts: Sequence[str], batch_size: int = TEXT_BATCH,
                 truncate: bool = True) -> np.ndarray:
    """L2-normalised text features.

    Parameters: ``texts`` the prompts; ``batch_size`` prompts per forward;
    ``truncate`` cut prompts longer than the context (else ValueError).
    Returns: (len(texts), D) float32, unit rows.
    """
    out = []
    with jt.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenize(texts[start:start + batch_size], model.context_length, truncate=truncate)
            out.append(normalize(model.encode_text(tokens)).numpy())
            jt.gc()
    return np.concatenate(out) if out else np.zeros((0, model.text_projection.shape[1]), np.float32)
