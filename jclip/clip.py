"""Loading CLIP models by name or path, choosing the device, batched encoding."""
import os

import numpy as np
import jittor as jt
from tqdm import tqdm

from .batching import run_in_slices
from .checkpoint import read_state_dict, sha256_file
from .download import OPENAI_URLS, output_filename
from .model import build_model, normalize
from .preprocess import Preprocess, iter_batches
from .tokenizer import tokenize

WEIGHTS_ENV = "JCLIP_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "weights"


def available_models():
    """OpenAI CLIP model names that ``load`` resolves (after ``convert.py``)."""
    return list(OPENAI_URLS)


def weights_dir(path=None):
    """The converted-weights folder: the argument, else $JCLIP_WEIGHTS, else ./weights."""
    return path or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR


def resolve(name_or_path, weights=None):
    """The file ``load`` reads for a model name or a path."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if name_or_path in OPENAI_URLS:
        path = os.path.join(weights_dir(weights), output_filename(name_or_path))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no converted weights for {name_or_path}; run "
                f"`python convert.py --models {name_or_path}` (or set {WEIGHTS_ENV} to the folder holding them)")
        return path
    raise FileNotFoundError(f"{name_or_path}: no such file, and not a model name "
                            f"(known: {', '.join(available_models())})")


def use_device(device=None):
    """Select Jittor's device: None = CUDA when Jittor has it, else CPU."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not jt.has_cuda:
        raise RuntimeError("device='cuda' asked for, but Jittor has no CUDA here "
                           "(set nvcc_path to your nvcc before importing jclip on a GPU machine)")
    jt.flags.use_cuda = int(device != "cpu" and bool(jt.has_cuda))
    return "cuda" if jt.flags.use_cuda else "cpu"


def load(name_or_path, device=None, weights=None):
    """``(model, preprocess)`` for an OpenAI CLIP name or a weights file.

    The file may be a converted jclip ``.pkl`` or an original PyTorch
    checkpoint (converted in memory, torch not needed).  The architecture is
    inferred from the state dict.  The model is fp32 and in eval mode.
    """
    path = resolve(name_or_path, weights)
    use_device(device)
    state_dict, meta = read_state_dict(path)
    model = build_model(state_dict, source=path)
    model.weights_path = path
    model.name = meta.get("model") or (name_or_path if name_or_path in OPENAI_URLS
                                       else os.path.basename(path))
    model._weights_sha256 = meta.get("source_sha256")
    return model, Preprocess(model.input_resolution)


def weights_sha256(model):
    """SHA-256 of the checkpoint a loaded model came from (recorded by convert.py,
    else hashed now); caches and trained heads are keyed by it."""
    if getattr(model, "_weights_sha256", None) is None:
        model._weights_sha256 = sha256_file(model.weights_path)
    return model._weights_sha256


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
