"""The fine-tuned network: a frozen trunk, a trainable tail, a new head, and
head files that remember the backbone they were trained on.

Only trained parameters are saved, with the backbone's name and SHA-256, so a
head file is small and cannot be silently paired with other weights.
"""
from typing import Tuple

import jittor as jt
import numpy as np

from ..io import sha256_file
from ..catalog import get_card
from ..models.convnext import ConvNeXtV2
from ..pretrained import load_convnextv2_file
from ..weights.checkpoint import CheckpointError, find_weights
from .data import BACKBONE_CARD
from .files import read_dog_head, trainable_prefixes


def trunk(model: ConvNeXtV2, x: jt.Var, unfreeze: int) -> jt.Var:
    """Frozen part: input -> activations entering the first trainable stage
    (or pooled features when only the head trains)."""
    first = 4 - unfreeze
    for i in range(first):
        x = model.stages[i](model.downsample_layers[i](x))
    if unfreeze == 0:
        x = model.norm(x.mean((2, 3)))
    return x


def tail(model: ConvNeXtV2, x: jt.Var, unfreeze: int) -> jt.Var:
    """Trainable part: trunk output -> logits."""
    if unfreeze > 0:
        for i in range(4 - unfreeze, 4):
            x = model.stages[i](model.downsample_layers[i](x))
        x = model.norm(x.mean((2, 3)))
    return model.head(x)


def load_backbone(weights: str) -> Tuple[ConvNeXtV2, str, str]:
    """(model with its checkpoint's head, size name, SHA-256 of the file) from a weights path."""
    weights = find_weights(weights) or weights     # X.pkl finds a converted X.safetensors
    model = load_convnextv2_file(weights)
    return model, model.name, sha256_file(weights)


def load_finetuned(weights: str, head: str) -> ConvNeXtV2:
    """Backbone weights + a head file from ``train()``; checks they belong together.

    Parameters: ``weights`` the backbone file the head was trained on;
    ``head`` the head file.
    Returns: the model in eval mode, with ``offset`` (the first contest id of
    the head's classes) and ``image_size`` set.  Raises CheckpointError when
    the file is not a head, or was trained on other weights.
    """
    state, meta = read_dog_head(head)           # the file's schema: meta, every tensor from the card
    weights = find_weights(weights) or weights
    sha = sha256_file(weights)
    if sha != meta["backbone_sha256"]:
        raise CheckpointError(
            f"{head} was trained on backbone {meta.get('backbone')} with SHA-256 "
            f"{meta['backbone_sha256'][:16]}..., but {weights} has {sha[:16]}...; "
            f"pass the weights it was trained with")
    model = load_convnextv2_file(weights, num_classes=int(meta["num_classes"]))
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise CheckpointError(f"{head}: keys not in the model: {', '.join(unknown[:10])}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{head}: {k} has shape {v.shape}, model {tuple(own[k].shape)}")
        own[k].assign(jt.array(v.astype(np.float32)))
    model.eval()
    model.offset = int(meta.get("offset", 0))
    model.image_size = int(meta.get("size", get_card(BACKBONE_CARD).input_size))
    return model
