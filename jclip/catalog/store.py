"""The catalogue's tables: the package's JSON files read once, lazily, and
what ``add_model_config`` adds.

Files are read in a fixed order (OpenAI's, open_clip's, ConvNeXt-V2's), so
the card order is stable: OpenAI's nine first, as ``available_models`` lists
them.  A file is validated whole before anything from it is added, so a
mistake leaves the catalogue as it was.
"""
import json
import os
import threading
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .open_clip import from_open_clip_config
from .schema import (TOP_KEYS, Architecture, CatalogError, ModelCard, UnsupportedArchitecture,
                     architecture_from_dict, card_from_dict)

CATALOG_DIR = os.path.dirname(os.path.abspath(__file__))
MODEL_FILES = tuple(os.path.join(CATALOG_DIR, f) for f in ("openai.json", "open_clip.json", "convnext.json"))
TEMPLATES_FILE = os.path.join(CATALOG_DIR, "templates.json")
# What convert.py makes with no arguments (the contest's three backbones).
DEFAULT_MODELS = ("ViT-B/32", "RN101", "convnextv2_base")


class _Tables:
    """Architectures, cards and refusals by name (insertion order kept)."""

    def __init__(self):
        self.archs: Dict[str, Architecture] = {}
        self.cards: Dict[str, ModelCard] = {}
        self.not_built: Dict[str, str] = {}


_LOCK = threading.Lock()


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise CatalogError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise CatalogError(f"{path}: not valid JSON ({e})") from None


def _parse(raw: Any, where: str, tables: _Tables) -> _Tables:
    """A catalogue file's entries, validated against the known ``tables``
    (a card may name an architecture of another file); nothing is added."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: must be a JSON object")
    extra = sorted(set(raw) - set(TOP_KEYS))
    if extra:
        raise CatalogError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(TOP_KEYS)})")
    new = _Tables()
    for section in ("defaults", "architectures", "models", "not_built"):
        if not isinstance(raw.get(section, {}), Mapping):
            raise CatalogError(f"{where}: {section}: must be a JSON object")
    for name, d in raw.get("architectures", {}).items():
        new.archs[name] = architecture_from_dict(name, d, f"{where}: architectures.{name}")
    known = {**tables.archs, **new.archs}
    for name, d in raw.get("models", {}).items():
        new.cards[name] = card_from_dict(name, d, raw.get("defaults", {}), known, f"{where}: models.{name}")
    for prefix, why in raw.get("not_built", {}).items():
        if not isinstance(why, str) or not why:
            raise CatalogError(f"{where}: not_built.{prefix}: must be a non-empty reason")
        new.not_built[prefix] = why
    return new


def _merge(tables: _Tables, new: _Tables) -> None:
    tables.archs.update(new.archs)
    tables.cards.update(new.cards)
    tables.not_built.update(new.not_built)


@lru_cache(maxsize=None)
def tables() -> _Tables:
    """The package's catalogue, read on first use."""
    t = _Tables()
    for path in MODEL_FILES:
        _merge(t, _parse(_read_json(path), path, t))
    return t


def add_model_config(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]]) -> List[str]:
    """Add models and architectures to the catalogue, as ``open_clip.add_model_config`` does.

    ``path_or_dict``: a catalogue file (the schema of jclip/catalog/*.json:
    ``architectures``, ``models``, ``defaults``, ``not_built``), the same as a
    dict, an open_clip model configuration file (``model_configs/<name>.json``,
    with ``vision_cfg``; its stem names the architecture), or a folder of such
    files.  Entries replace same-named ones.  Returns the names added.
    Raises CatalogError (or UnsupportedArchitecture for an open_clip
    configuration jclip does not build) naming the file and the key; nothing
    is added then.
    """
    if isinstance(path_or_dict, Mapping):
        items = [("the added model config", dict(path_or_dict), None)]
    else:
        path = os.fspath(path_or_dict)
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".json")) \
            if os.path.isdir(path) else [path]
        items = [(f, _read_json(f), os.path.splitext(os.path.basename(f))[0]) for f in files]
    with _LOCK:
        t = tables()
        staged = _Tables()
        for where, raw, stem in items:
            if stem is not None and isinstance(raw, Mapping) and "vision_cfg" in raw:
                try:
                    staged.archs[stem] = from_open_clip_config(stem, raw)
                except (KeyError, TypeError, ValueError) as e:
                    if isinstance(e, UnsupportedArchitecture):
                        raise UnsupportedArchitecture(f"{where}: {e}") from None
                    raise CatalogError(f"{where}: malformed open_clip model config ({e})") from None
                continue
            view = _Tables()
            view.archs = {**t.archs, **staged.archs}
            _merge(staged, _parse(raw, where, view))
        _merge(t, staged)
    return list(staged.archs) + [n for n in staged.cards if n not in staged.archs]


# ------------------------------------------------------------- look-ups

def cards() -> Dict[str, ModelCard]:
    """Every model card by name (a copy)."""
    return dict(tables().cards)


def architectures(family: Optional[str] = None) -> Dict[str, Architecture]:
    """Every architecture by name, optionally only one family's ("clip", "convnextv2")."""
    return {n: a for n, a in tables().archs.items() if family is None or a.family == family}


def not_built() -> Dict[str, str]:
    """open_clip architectures (name prefixes) jclip knowingly does not build -> why."""
    return dict(tables().not_built)


def get_architecture(name: str) -> Architecture:
    """The architecture ``name``; UnsupportedArchitecture saying why for one
    jclip does not build (a one-line message)."""
    archs = tables().archs
    if name in archs:
        return archs[name]
    clip = ", ".join(n for n, a in archs.items() if a.family == "clip")
    reason = next((why for prefix, why in not_built().items() if str(name).startswith(prefix)), None)
    if reason:
        raise UnsupportedArchitecture(f"open_clip architecture {name} is not one jclip builds: {reason} "
                                      f"(jclip builds: {clip})")
    raise UnsupportedArchitecture(f"unknown architecture {name!r}; jclip builds: {', '.join(archs)}")


def unbuildable_reason(name: str) -> Optional[str]:
    """For an open_clip name ("coca_ViT-B-32/laion2b_s13b_b90k") whose
    architecture is one jclip knowingly does not build, the one-line reason;
    else None (a path or an unknown name is not refused here)."""
    arch, sep, tag = name.partition("/")
    if not sep or not tag or "/" in tag or arch in tables().archs:
        return None
    if any(arch.startswith(prefix) for prefix in not_built()):
        try:
            get_architecture(arch)
        except UnsupportedArchitecture as e:
            return f"{name}: {e}"
    return None


def get_card(name: str) -> ModelCard:
    """The card of ``name``; KeyError listing the known names otherwise (or
    saying why, for an open_clip architecture jclip does not build)."""
    try:
        return tables().cards[name]
    except KeyError:
        reason = unbuildable_reason(name)
        raise KeyError(reason or f"unknown model {name!r}; known: {', '.join(tables().cards)}") from None


def available(family: Optional[str] = None) -> List[str]:
    """Model names, optionally only those of one family ("clip", "convnextv2")."""
    return [n for n, c in tables().cards.items() if family is None or c.family == family]


def open_clip_cards() -> Dict[str, ModelCard]:
    """The cards of open_clip's weights ("ViT-B-32/laion2b_s34b_b79k"), those on the hub."""
    return {n: c for n, c in tables().cards.items() if c.hub}


def open_clip_card(name: str) -> Optional[ModelCard]:
    """The card of an open_clip model name ("ViT-B-32/laion2b_s34b_b79k"), or None."""
    card = tables().cards.get(name)
    return card if card is not None and card.hub else None


def card_for_sha256(sha: str) -> Optional[ModelCard]:
    """The card whose published SHA-256 is ``sha``, or None."""
    return next((c for c in tables().cards.values() if c.sha256 is not None and c.sha256 == sha), None)


# ------------------------------------------------------------- templates

@lru_cache(maxsize=None)
def _template_sets() -> Dict[str, Tuple[str, ...]]:
    raw = _read_json(TEMPLATES_FILE)
    sets = {}
    for name, templates in raw.items():
        if name.startswith("_"):
            continue
        if (not isinstance(templates, list) or not templates
                or any(not isinstance(t, str) or "{}" not in t for t in templates)):
            raise CatalogError(f"{TEMPLATES_FILE}: {name}: a template set is a non-empty list "
                               "of strings containing '{}'")
        sets[name] = tuple(templates)
    return sets


def template_sets() -> Dict[str, Tuple[str, ...]]:
    """Prompt template sets by name ("single", "imagenet7", "imagenet80")."""
    return dict(_template_sets())


def template_set_names() -> Tuple[str, ...]:
    """The names of the prompt template sets, in the catalogue's order."""
    return tuple(_template_sets())
