"""jclip's catalogue: every model and every prompt-template set, as data.

Pure Python (no Jittor, no numpy): the package-data JSON files beside this
module (openai.json, open_clip.json, convnext.json, templates.json), read
once, lazily, and validated when read against one schema (``schema.py``).
Everything that needs a fact about a model (the converter, the downloader,
the loaders, preprocessing, the budget, the weight shape checks) asks here:

* cards: ``get_card``, ``cards``, ``available``, ``open_clip_card``,
  ``card_for_sha256``; architectures: ``get_architecture``, ``architectures``,
  ``unbuildable_reason``; ``add_model_config`` adds to both;
* layouts: ``state_dict_layout(arch)`` (key -> shape), ``prepare_state_dict``
  (a state dict checked against the layout its keys show);
* sources: ``model_source``, ``model_urls`` ... (``sources.py``);
* prompt templates: ``template_sets``, ``template_set_names``.
"""
from .layout import (StateDictError, check_state_dict, clip_facts, convnext_facts, detect_family,
                     prepare_state_dict, state_dict_layout)
from .open_clip import from_open_clip_config, split_name
from .schema import (HUB_FILES, WEIGHTS_FORMATS, CatalogError, ClipArch, ConvNeXtArch, ModelCard, TextArch,
                     UnsupportedArchitecture, VisionArch)
from .store import (DEFAULT_MODELS, add_model_config, architectures, available, card_for_sha256, cards,
                    get_architecture, get_card, not_built, open_clip_card, open_clip_cards, template_set_names,
                    template_sets, unbuildable_reason)

__all__ = [
    "CatalogError", "ClipArch", "ConvNeXtArch", "DEFAULT_MODELS", "HUB_FILES", "ModelCard", "StateDictError",
    "TextArch", "UnsupportedArchitecture", "VisionArch", "WEIGHTS_FORMATS", "add_model_config",
    "architectures", "available", "card_for_sha256", "cards", "check_state_dict", "clip_facts",
    "convnext_facts", "detect_family", "from_open_clip_config", "get_architecture", "get_card", "not_built",
    "open_clip_card", "open_clip_cards", "prepare_state_dict", "split_name", "state_dict_layout",
    "template_set_names", "template_sets", "unbuildable_reason",
]
