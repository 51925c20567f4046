"""The schemas of the fine-tuning files, and their readers (no Jittor).

- **The dog head** (``dog_head.safetensors``, ``finetune.train``): the
  ConvNeXt-V2 parameters that were trained (``trainable_prefixes``)
  with the meta saying what they belong to.  Every tensor's name and shape
  comes from the backbone's catalogue card (``catalog.state_dict_layout`` at
  the file's ``num_classes``, kept to the trained prefixes): a file missing
  ``head.weight``, holding a tensor of another shape, an extra tensor or a
  NaN is refused in one line naming the file and the tensor.
- **ClipFinetune** (``ClipFinetune.save``): jclip weights of kind
  ``jclip-clip-finetune``: the head file header (heads/head_file.py) as JSON
  in ``head``, the base checkpoint's name and SHA-256 beside it.
"""
import json
import os
from typing import Dict, Tuple

import numpy as np

from ..catalog import get_card, state_dict_layout
from ..file_schema import (Array, FileFormatError, Int, Record, Sha256, Str, check_arrays, check_value,
                           loads_bounded)
from ..weights.checkpoint import FORMAT_VERSION, read_state_dict, save_state_dict

INT64 = (-(1 << 63), (1 << 63) - 1)
# what save_state_dict records in every jclip weights file
WEIGHTS_FIELDS = {"dtype": Str(choices=["float32", "float16"]), "format": Str(choices=["jclip"]),
                  "format_version": Int(FORMAT_VERSION, FORMAT_VERSION)}

DOG_HEAD_META = Record({
    "backbone": Str(max_len=200), "backbone_sha256": Sha256(), "num_classes": Int(1, 1 << 20),
    "offset": Int(0, 1 << 31), "unfreeze": Int(0, 4), "size": Int(32, 4096), "mode": Str(max_len=64),
    "epoch": Int(0, 1 << 31), "epochs": Int(1, 1 << 31), "seed": Int(*INT64),
    "val_acc": Str(pattern=r"[01]\.\d{4}"), **WEIGHTS_FIELDS}, optional=["val_acc"])

CLIP_FINETUNE_KIND = "jclip-clip-finetune"
CLIP_FINETUNE_META = Record({
    "kind": Str(choices=[CLIP_FINETUNE_KIND]), "head": Str(max_len=16 << 20), "base": Str(max_len=200),
    "base_sha256": Str(pattern=r"(weights:)?[0-9a-f]{64}"), **WEIGHTS_FIELDS})


def trainable_prefixes(unfreeze: int) -> Tuple[str, ...]:
    """State-dict prefixes trained with ``unfreeze`` last stages unfrozen
    (what a dog head file holds)."""
    pre = ["head."]
    if unfreeze > 0:
        pre.append("norm.")
        for s in range(4 - unfreeze, 4):
            pre += [f"stages.{s}.", f"downsample_layers.{s}."]
    return tuple(pre)


def _backbone_card(name: str):
    for candidate in (name, f"convnextv2_{name}"):
        try:
            card = get_card(candidate)
        except KeyError:
            continue
        if card.family == "convnextv2":
            return card
    return None


def dog_head_layout(meta: Dict) -> Dict[str, Array]:
    """{tensor: Array spec} a dog head file with this (checked) meta holds:
    the card's layout for a backbone the catalogue knows, else the head alone."""
    n = meta["num_classes"]
    card = _backbone_card(meta["backbone"])
    if card is None:
        return {"head.weight": Array("f", (n, "D")), "head.bias": Array("f", (n,))}
    pre = trainable_prefixes(meta["unfreeze"])
    return {k: Array("f", shape) for k, shape in state_dict_layout(card.architecture, n).items()
            if k.startswith(pre)}


def _jclip_file(path, meta) -> None:
    if meta.get("format") != "jclip":
        raise FileFormatError(path, "jclip_meta", f"missing: a {meta.get('format')} file, not jclip weights")


def read_dog_head(path) -> Tuple[Dict[str, np.ndarray], Dict]:
    """(state, meta) of a dog head file, checked against its schema."""
    path = os.fspath(path)
    state, meta = read_state_dict(path)          # CheckpointError (a ValueError) naming the file
    _jclip_file(path, meta)
    meta = check_value(path, meta, DOG_HEAD_META, "jclip_meta")
    check_arrays(path, state, dog_head_layout(meta))
    return state, meta


def write_clip_finetune(head, path, header, arrays) -> None:
    """ClipFinetune's file: jclip weights with the head header as JSON."""
    header = dict(header)
    identity = {k: header.pop(k) for k in ("base", "base_sha256")}
    save_state_dict(path, arrays, {"kind": CLIP_FINETUNE_KIND, "head": json.dumps(header, allow_nan=False),
                                   **identity})


def read_clip_finetune(path):
    """(head header with base / base_sha256, arrays) of a ClipFinetune file,
    the weights meta checked; the header is checked by the head's schema."""
    path = os.fspath(path)
    arrays, meta = read_state_dict(path)
    _jclip_file(path, meta)
    if meta.get("kind") != CLIP_FINETUNE_KIND:
        raise FileFormatError(path, "kind", f"not a clip_finetune file (a jclip weights file of kind "
                                            f"{meta.get('kind')!r})")
    meta = check_value(path, meta, CLIP_FINETUNE_META, "jclip_meta")
    header = loads_bounded(meta["head"], path)
    if not isinstance(header, dict):
        raise FileFormatError(path, "head", "the head header is not an object")
    check_value(path, header, Record({"head": Str()}, extra=True))
    if "base" in header or "base_sha256" in header:
        raise FileFormatError(path, "head", "the base checkpoint is recorded twice")
    return dict(header, base=meta["base"], base_sha256=meta["base_sha256"]), arrays


class ClipFinetuneFile:
    """The container head_file writes ClipFinetune through."""

    write = staticmethod(write_clip_finetune)
    read = staticmethod(read_clip_finetune)


def check_clip_finetune_file(path) -> None:
    """A ClipFinetune file checked against its whole schema (no model needed)."""
    from ..heads.registry import check_head_file
    check_head_file(os.fspath(path))
