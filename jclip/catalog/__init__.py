"""jclip's catalogue: every model and every prompt-template set, as data.

Pure Python (no Jittor, no numpy): package-data JSON files read once, lazily,
and validated when read.  Everything that needs a fact about a model (the
converter, the downloader, the loader, preprocessing, the budget, the weight
shape checks) asks here.
"""
import json
import os
from functools import lru_cache
from typing import Dict, Tuple

CATALOG_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATES_FILE = os.path.join(CATALOG_DIR, "templates.json")


@lru_cache(maxsize=None)
def _template_sets() -> Dict[str, Tuple[str, ...]]:
    with open(TEMPLATES_FILE, encoding="utf-8") as f:
        raw = json.load(f)
    sets = {}
    for name, templates in raw.items():
        if name.startswith("_"):
            continue
        if (not isinstance(templates, list) or not templates
                or any(not isinstance(t, str) or "{}" not in t for t in templates)):
            raise ValueError(f"{TEMPLATES_FILE}: template set {name!r}: must be a non-empty list "
                             "of strings containing '{}'")
        sets[name] = tuple(templates)
    return sets


def template_sets() -> Dict[str, Tuple[str, ...]]:
    """Prompt template sets by name ("single", "imagenet7", "imagenet80")."""
    return dict(_template_sets())


def template_set_names() -> Tuple[str, ...]:
    """The names of the prompt template sets, in the catalogue's order."""
    return tuple(_template_sets())
