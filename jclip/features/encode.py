"""Batched CLIP encoding of image arrays, image files and prompts (normalised features)."""
import jittor as jt
import numpy as np
from tqdm import tqdm

from ..data.images import iter_batches
from ..models.batching import run_in_slices
from ..models.clip import normalize
from ..models.tokenizer import tokenize


def _encode(model, batch):
    """Normalised image features of one batch, sliced on CPU for conv towers."""
    return run_in_slices(lambda x: normalize(model.encode_image(x)), batch,
                         getattr(model.visual, "cpu_batch", None))


def encode_images(model, images, batch_size=64):
    """L2-normalised features of a preprocessed (N, 3, S, S) array, in batches."""
    out = []
    with jt.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(_encode(model, images[start:start + batch_size]))
            jt.gc()
    return np.concatenate(out) if out else np.zeros((0, model.text_projection.shape[1]), np.float32)


def encode_image_files(model, paths, preprocess, batch_size=64, workers=None, strict=False,
                       progress=True, desc="encoding images"):
    """L2-normalised features of image files: ``(features, ok, errors)``.

    Files are decoded by a thread pool one batch ahead of the model.  ``ok``
    are the indices of ``paths`` that ``features`` rows hold; unreadable files
    are listed in ``errors`` as ``(path, message)`` (raised with ``strict``).
    """
    paths = list(paths)
    feats, ok, errors = [], [], []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
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


def encode_texts(model, texts, batch_size=256, truncate=True):
    """L2-normalised features of a list of strings."""
    out = []
    with jt.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenize(texts[start:start + batch_size], model.context_length, truncate=truncate)
            out.append(normalize(model.encode_text(tokens)).numpy())
            jt.gc()
    return np.concatenate(out) if out else np.zeros((0, model.text_projection.shape[1]), np.float32)
