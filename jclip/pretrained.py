"""Pretrained models by name or path: the catalogue's card, the weights file
read by ``weights/``, the network built by ``models/``.

The one place that joins the two stages (``weights/`` never imports
``models/`` and ``models/`` never imports ``weights/``; both read the
catalogue).  ``jclip.load`` is :func:`load`.
"""
import os
from typing import Optional, Tuple

from .catalog import get_card, unbuildable_reason
from .data.images import Preprocess, preprocess_for
from .models.clip import CLIP, build_model
from .models.load import available_models, use_device
from .weights.checkpoint import find_weights, read_state_dict

WEIGHTS_ENV = "JCLIP_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "weights"


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
    recorded = meta.get("model")
    if name_or_path != path and recorded is not None and recorded != name_or_path:
        raise ValueError(f"{path}: holds {recorded}, not {name_or_path} (asked for by name); "
                         f"convert {name_or_path} again or load the file by its path")
    model = build_model(state_dict, source=path, meta=meta)   # meta: open_clip's architecture
    model.weights_path = path
    model.name = meta.get("model") or (name_or_path if name_or_path in available_models()
                                       else os.path.basename(path))
    model._weights_sha256 = meta.get("source_sha256")
    try:   # the card's preprocessing (open_clip tags have their own mean/std)
        card = get_card(model.name)
    except KeyError:
        card = None
    if card is not None and card.family == "clip":
        return model, preprocess_for(card.name, model.input_resolution)
    return model, Preprocess(model.input_resolution)


def load_convnextv2_file(path, name=None, num_classes=None, drop_path_rate=0.0, strict=True):
    """``models.convnext.load_convnextv2`` on the weights in ``path`` (any
    format jclip reads; a ``.pkl`` name also finds its ``.safetensors``)."""
    from .models.convnext import load_convnextv2
    source = find_weights(path) or os.fspath(path)
    state_dict, _meta = read_state_dict(source)
    return load_convnextv2(state_dict, name=name, num_classes=num_classes, drop_path_rate=drop_path_rate,
                           strict=strict, source=source)
