"""Inference with a fine-tuned head: logits of image files, top-k ids."""
from typing import List, Optional, Sequence, Tuple, Union

import jittor as jt
import numpy as np

from ..data.images import Preprocess
from ..models.batching import run_in_slices
from ..models.convnext import ConvNeXtV2
from .data import eval_transform, image_batches, list_images


def predict_logits(model: ConvNeXtV2, paths: Sequence[str], transform: Preprocess,
                   batch_size: int, bad: List[str], threads: int = 4, strict: bool = False,
                   desc: Optional[str] = None) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """(readable paths, logits (N, classes), their indices into ``paths``).

    Unreadable files are skipped and added to ``bad`` (``strict`` raises).
    """
    out, kept = [], []
    model.eval()
    with jt.no_grad():
        for x, idx in image_batches(paths, batch_size, transform, bad, threads, strict, desc=desc):
            out.append(run_in_slices(lambda v: model(jt.array(v)), x, model.cpu_batch))
            kept.append(idx)
    if not out:
        raise ValueError("no readable images")
    kept = np.concatenate(kept)
    return [paths[i] for i in kept], np.concatenate(out), kept


def predict(model: ConvNeXtV2, images: Union[str, Sequence[str]], k: int = 5, batch_size: int = 32,
            root: Optional[str] = None, threads: int = 4, strict: bool = False,
            offset: Optional[int] = None, verbose: bool = True
            ) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Top-k of a fine-tuned model on a folder, a list file or a list of paths.

    Parameters: ``model`` from ``load_finetuned``; ``images`` a folder, a
    list file (paths relative to ``root``, default its folder) or paths;
    ``offset`` added to the ids (default: the model's, its first contest id);
    ``strict`` raise on an unreadable image instead of skipping it.
    Returns: (kept paths, ids (N, k) int64 with the offset added, softmax
    probabilities (N, k), descending); unreadable files are left out.
    """
    paths = list_images(images, root) if isinstance(images, str) else list(images)
    offset = getattr(model, "offset", 0) if offset is None else offset
    transform = eval_transform(getattr(model, "image_size", None))
    kept, logits, _ = predict_logits(model, paths, transform, batch_size, [], threads, strict,
                                     desc="predict" if verbose else None)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    top = np.argsort(-probs, 1, kind="stable")[:, :k]
    return kept, top + offset, np.take_along_axis(probs, top, 1)
