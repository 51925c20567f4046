"""Prompt templates and class-name cleaning for zero-shot classifiers.

Template lists are CLIP's: the single "a photo of a {}." prompt, the 7-template
ImageNet subset used by Tip-Adapter, CoOp and InMaP, and the 80 templates of
openai/CLIP's "Prompt_Engineering_for_ImageNet" notebook.
"""
import re
from typing import List, Sequence, Tuple, Union

from ..catalog import template_sets

# The sets themselves are catalogue data (jclip/catalog/templates.json).
TEMPLATE_SETS = template_sets()
SINGLE_TEMPLATE = TEMPLATE_SETS["single"]
IMAGENET_7_TEMPLATES = TEMPLATE_SETS["imagenet7"]
IMAGENET_80_TEMPLATES = TEMPLATE_SETS["imagenet80"]

# Fine-grained domains get CoOp/Tip-Adapter style suffixes
# ("a photo of a {}, a type of food."); generic domains keep the plain ".".
DOMAIN_SUFFIXES = {
    "Animal": ", a type of animal.",
    "Thu-dog": ", a type of dog.",
    "Food-101": ", a type of food.",
    "Caltech-101": ".",
    "Stanford-Cars": ", a type of car.",
}

KNOWN_DOMAINS = tuple(DOMAIN_SUFFIXES)


def split_class_name(raw: str) -> Tuple[str, str]:
    """'Thu-dog_Shiba_Dog' -> ('Thu-dog', 'Shiba_Dog'); no known prefix -> ('', raw)."""
    for domain in sorted(KNOWN_DOMAINS, key=len, reverse=True):
        if raw.startswith(domain + "_"):
            return domain, raw[len(domain) + 1:]
    return "", raw


def clean_class_name(raw: str) -> str:
    """Readable class name: domain prefix dropped, underscores to spaces.

    'Thu-dog_Shiba_Dog' -> 'Shiba Dog', 'Caltech-101_car_side' -> 'car side'.
    """
    _, name = split_class_name(raw)
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip()


def class_key(raw: str) -> str:
    """A class name as the text encoder tells it apart from others: cleaned
    (``clean_class_name``), case-folded, with ``_``, ``-`` and spaces alike.
    'Golden_Retriever', 'golden retriever' and 'Thu-dog_Golden-Retriever' have
    one key; class lists that must be disjoint compare keys."""
    return " ".join(re.split(r"[\s_-]+", clean_class_name(raw).casefold())).strip()


def get_templates(templates: Union[str, Sequence[str]]) -> List[str]:
    """A template set by name ('single', 'imagenet7', 'imagenet80') or a list."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; "
                             f"choose from {sorted(TEMPLATE_SETS)} or pass a list")
        return list(TEMPLATE_SETS[templates])
    templates = list(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of strings with '{}'")
    return templates


def with_suffix(template: str, suffix: str) -> str:
    """Replace a template's final '.' with ``suffix`` (', a type of dog.')."""
    if not suffix or suffix == ".":
        return template
    base = template[:-1] if template.endswith(".") else template
    return base + suffix


def class_prompts(raw_name: str, templates: Union[str, Sequence[str]] = "imagenet7",
                  domain_suffix: bool = True) -> List[str]:
    """All prompts for one raw class name ('Food-101_apple_pie'): each template
    filled with the clean name, ending in the domain's suffix when ``domain_suffix``."""
    domain, _ = split_class_name(raw_name)
    name = clean_class_name(raw_name)
    suffix = DOMAIN_SUFFIXES.get(domain, ".") if domain_suffix else "."
    return [with_suffix(t, suffix).format(name) for t in get_templates(templates)]
