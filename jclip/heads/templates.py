"""Prompt templates and class-name cleaning for zero-shot classifiers.

Template lists are CLIP's: the single "a photo of a {}." prompt, the 7-template
ImageNet subset used by Tip-Adapter, CoOp and InMaP, and the 80 templates of
openai/CLIP's "Prompt_Engineering_for_ImageNet" notebook.
"""
import re
from typing import List, Sequence, Tuple, Union

SINGLE_TEMPLATE = ("a photo of a {}.",)

IMAGENET_7_TEMPLATES = (
    "itap of a {}.",
    "a origami {}.",
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

IMAGENET_80_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.",
    "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

TEMPLATE_SETS = {
    "single": SINGLE_TEMPLATE,
    "imagenet7": IMAGENET_7_TEMPLATES,
    "imagenet80": IMAGENET_80_TEMPLATES,
}

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
