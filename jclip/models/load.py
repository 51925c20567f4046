"""Loading CLIP models by name or path, and choosing the device."""
import os
from typing import List, Optional, Tuple

import jittor as jt

from ..data.images import Preprocess, preprocess_for
from ..weights.checkpoint import find_weights, read_state_dict
from ..io import sha256_file
from .registry import CARDS, available as _registered, get_card
from .open_clip import unbuildable_reason
from .clip import CLIP, build_model

WEIGHTS_ENV = "JCLIP_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "weights"


def available_models() -> List[str]:
    """OpenAI CLIP model names that ``load`` resolves (after ``convert.py``).

    Returns: the names in the registry's order ("RN50" ... "ViT-L/14@336px").
    """
    return _registered("clip")


def weights_dir(path: Optional[str] = None) -> str:
    """The converted-weights folder: the argument, else $JCLIP_WEIGHTS, else ./weights."""
    return path or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR


def resolve(name_or_path: str, weights: Optional[str] = None) -> str:
    """The file ``load`` reads for a model name or a path (FileNotFoundError
    naming what to run when there is none)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    # A .pkl path whose .safetensors sibling exists (or the reverse) is found.
    found = find_weights(name_or_path)
    if found:
        return found
    if name_or_path in available_models():
        # .safetensors first, then a .pkl converted by an older convert.py.
        path = os.path.join(weights_dir(weights), get_card(name_or_path).weights_filename())
        path = find_weights(path) or path
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: no converted weights for {name_or_path}; run "
                f"`python convert.py --models {name_or_path}` (or set {WEIGHTS_ENV} to the folder holding them)")
        return path
    reason = unbuildable_reason(name_or_path)   # an open_clip architecture jclip does not build
    if reason:
        raise ValueError(reason)
    raise FileNotFoundError(f"{name_or_path}: no such file, and not a model name "
                            f"(known: {', '.join(available_models())})")


def use_device(device: Optional[str] = None) -> str:
    """Select Jittor's device for everything that runs next.

    Parameters: ``device`` None (CUDA when Jittor has it, else the CPU),
    "cpu" or "cuda" (RuntimeError when Jittor has no CUDA).
    Returns: the device chosen, "cpu" or "cuda".
    """
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', not {device!r}")
    if device == "cuda" and not jt.has_cuda:
        raise RuntimeError("device='cuda' asked for, but Jittor has no CUDA here "
                           "(set nvcc_path to your nvcc before importing jclip on a GPU machine)")
    jt.flags.use_cuda = int(device != "cpu" and bool(jt.has_cuda))
    return "cuda" if jt.flags.use_cuda else "cpu"


def load(name_or_path: str, device: Optional[str] = None,
         weights: Optional[str] = None) -> Tuple[CLIP, Preprocess]:
    """``(model, preprocess)`` for an OpenAI CLIP name or a weights file.

    Parameters: ``name_or_path`` a name of ``available_models()`` (read from
    the converted-weights folder) or a file: a converted jclip weights file
    or an original PyTorch checkpoint (converted in memory, torch not
    needed); ``device`` as ``use_device``; ``weights`` the converted-weights
    folder (default $JCLIP_WEIGHTS, else ./weights).
    Returns: the model (architecture inferred from the state dict, fp32, eval
    mode) and its eval transform (``Preprocess`` at the model's input size).
    Raises FileNotFoundError for a missing file, ValueError/CheckpointError
    naming the file for one that is not a CLIP checkpoint.
    """
    path = resolve(name_or_path, weights)
    use_device(device)
    state_dict, meta = read_state_dict(path)
    model = build_model(state_dict, source=path, meta=meta)   # meta: open_clip's architecture
    model.weights_path = path
    model.name = meta.get("model") or (name_or_path if name_or_path in available_models()
                                       else os.path.basename(path))
    model._weights_sha256 = meta.get("source_sha256")
    card = CARDS.get(model.name)   # the card's preprocessing (open_clip tags have their own mean/std)
    if card is not None and card.family == "clip":
        return model, preprocess_for(card.name, model.input_resolution)
    return model, Preprocess(model.input_resolution)


def weights_sha256(model: CLIP) -> str:
    """SHA-256 of the checkpoint a loaded model came from.

    Parameters: ``model`` a model from ``load``.
    Returns: the hex digest recorded by convert.py, else the file hashed now
    (once); feature caches and trained heads are keyed by it.
    """
    if getattr(model, "_weights_sha256", None) is None:
        model._weights_sha256 = sha256_file(model.weights_path)
    return model._weights_sha256
