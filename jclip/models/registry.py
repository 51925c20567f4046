"""One card per model: where its official checkpoint lives, what it hashes to,
what it is, and how its images are prepared (timm's ``default_cfg`` idea).

Pure data and small look-ups, no Jittor: the converter, the downloader, the
model loader, preprocessing and the budget all read these cards.

OpenAI publishes each CLIP checkpoint's SHA-256 as a path component of its URL
(openai/CLIP, clip/clip.py ``_MODELS``); the ConvNeXt-V2 release
(facebookresearch/ConvNeXt-V2 README) publishes no hash, so its card has
``sha256=None`` (the converter records the hash it computed).  open_clip's
weights ("ViT-B-32/laion2b_s34b_b79k": architecture/pretrained tag) live on
the Hugging Face hub, which publishes each file's SHA-256 as its LFS object id;
their cards name the hub repository (``hub``) and the converter checks the
hash the hub states at download time (``weights/hub.py``).  Every CLIP card
names its architecture (``arch``; sizes in ``card.architecture``, facts in
``models/configs/architectures.json``).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .open_clip import ClipArch, get_architecture, pretrained_tags, unbuildable_reason

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# jclip's own weights formats, preferred first (load looks for them in order).
WEIGHTS_FORMATS = ("safetensors", "pkl")


@dataclass(frozen=True)
class ModelCard:
    """What jclip knows about one model.

    name: the name users type ("ViT-B/32"); url: the official checkpoint;
    sha256: its published SHA-256 (None when unpublished); family: "clip" or
    "convnextv2"; input_size: the square crop fed to the network;
    mean/std: per-channel normalisation; interpolation: resize filter;
    crop_pct: crop / resized shortest side (1.0 for CLIP: resize the shortest
    side to input_size, then centre-crop); weights_stem: the converted file's
    name without its format suffix; arch: the CLIP architecture's name
    (``architecture`` gives its sizes); hub: the Hugging Face repository of
    open_clip weights (None for OpenAI's and ConvNeXt's); resize_mode:
    open_clip's "shortest" (resize the short side, centre-crop), "longest" or
    "squash".
    """
    name: str
    url: str
    sha256: Optional[str]
    family: str
    input_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    interpolation: str
    crop_pct: float
    weights_stem: str
    arch: Optional[str] = None
    hub: Optional[str] = None
    resize_mode: str = "shortest"

    @property
    def source_filename(self) -> str:
        """The official file's name ("ViT-B-32.pt"), so a hand-downloaded copy
        is found; a hub file keeps its name in a folder named after the model
        ("ViT-B-32-laion2b_s34b_b79k/open_clip_model.safetensors")."""
        base = self.url.rsplit("/", 1)[-1]
        return f"{self.weights_stem}/{base}" if self.hub else base

    @property
    def architecture(self) -> ClipArch:
        """The CLIP architecture's sizes and choices (ValueError for a card without one)."""
        if self.arch is None:
            raise ValueError(f"model {self.name!r} is not a CLIP (no architecture)")
        return get_architecture(self.arch)

    @property
    def resize(self) -> int:
        """Shortest side after resizing, before the centre crop."""
        return int(self.input_size / self.crop_pct)

    def weights_filename(self, fmt: str = "safetensors") -> str:
        """Converted weights file name in format ``fmt`` ("safetensors" or "pkl")."""
        if fmt not in WEIGHTS_FORMATS:
            raise ValueError(f"unknown weights format {fmt!r}; known: {', '.join(WEIGHTS_FORMATS)}")
        return f"{self.weights_stem}.{fmt}"


_OPENAI = "https://openaipublic.azureedge.net/clip/models/"
_CLIP = [   # name, SHA-256 (the URL's path component), file, architecture (open_clip's name)
    ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt", "RN50-quickgelu"),
    ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt", "RN101-quickgelu"),
    ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt",
     "RN50x4-quickgelu"),
    ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt",
     "RN50x16-quickgelu"),
    ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt",
     "RN50x64-quickgelu"),
    ("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt",
     "ViT-B-32-quickgelu"),
    ("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt",
     "ViT-B-16-quickgelu"),
    ("ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt",
     "ViT-L-14-quickgelu"),
    ("ViT-L/14@336px", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
     "ViT-L-14-336px.pt", "ViT-L-14-336-quickgelu"),
]
HF_HUB = "https://huggingface.co/"
# open_clip's file names on the hub; safetensors first (no pickle), as open_clip prefers.
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CONVNEXT_IM1K = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/"

CARDS: Dict[str, ModelCard] = {}
for _name, _sha, _file, _arch in _CLIP:
    CARDS[_name] = ModelCard(
        name=_name, url=f"{_OPENAI}{_sha}/{_file}", sha256=_sha, family="clip",
        input_size=get_architecture(_arch).vision.image_size, mean=CLIP_MEAN, std=CLIP_STD,
        interpolation="bicubic", crop_pct=1.0, weights_stem=_name.replace("/", "-"), arch=_arch)
for _name, _tag in pretrained_tags().items():   # open_clip's: the hub publishes their hashes
    _arch = _name.split("/", 1)[0]
    CARDS[_name] = ModelCard(
        name=_name, url=f"{HF_HUB}{_tag['hub']}/resolve/main/{HUB_FILES[0]}", sha256=None,
        family="clip", input_size=get_architecture(_arch).vision.image_size,
        mean=tuple(_tag["mean"]), std=tuple(_tag["std"]), interpolation=_tag["interpolation"],
        crop_pct=1.0, weights_stem=_name.replace("/", "-"), arch=_arch, hub=_tag["hub"],
        resize_mode=_tag["resize_mode"])
CARDS["convnextv2_base"] = ModelCard(
    name="convnextv2_base", url=_CONVNEXT_IM1K + "convnextv2_base_1k_224_ema.pt", sha256=None,
    family="convnextv2", input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    interpolation="bicubic", crop_pct=0.875, weights_stem="convnextv2_base_1k_224_ema")
del _name, _sha, _file, _arch, _tag

DEFAULT_MODELS = ("ViT-B/32", "RN101", "convnextv2_base")


def get_card(name: str) -> ModelCard:
    """The card of ``name``; KeyError listing the known names otherwise (or
    saying why, for an open_clip architecture jclip does not build)."""
    try:
        return CARDS[name]
    except KeyError:
        reason = unbuildable_reason(name)
        raise KeyError(reason or f"unknown model {name!r}; known: {', '.join(CARDS)}") from None


def available(family: Optional[str] = None) -> List[str]:
    """Model names, optionally only those of one family ("clip", "convnextv2")."""
    return [n for n, c in CARDS.items() if family is None or c.family == family]


def open_clip_card(name: str) -> Optional[ModelCard]:
    """The card of an open_clip model name ("ViT-B-32/laion2b_s34b_b79k"), or None."""
    card = CARDS.get(name)
    return card if card is not None and card.hub else None


def card_for_sha256(sha: str) -> Optional[ModelCard]:
    """The card whose published SHA-256 is ``sha``, or None."""
    return next((c for c in CARDS.values() if c.sha256 is not None and c.sha256 == sha), None)


def card_for_weights_file(filename: str) -> Optional[ModelCard]:
    """The card whose converted weights file (any format) or official file is
    called ``filename`` (a base name), or None."""
    for c in CARDS.values():
        if filename == c.source_filename or any(
                filename == c.weights_filename(f) for f in WEIGHTS_FORMATS):
            return c
    return None
