"""One card per model: where its official checkpoint lives, what it hashes to,
what it is, and how its images are prepared (timm's ``default_cfg`` idea).

Pure data and small look-ups, no Jittor: the converter, the downloader, the
model loader, preprocessing and the budget all read these cards.

OpenAI publishes each CLIP checkpoint's SHA-256 as a path component of its URL
(openai/CLIP, clip/clip.py ``_MODELS``); the ConvNeXt-V2 release
(facebookresearch/ConvNeXt-V2 README) publishes no hash, so its card has
``sha256=None`` (the converter records the hash it computed).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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
    name without its format suffix.
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

    @property
    def source_filename(self) -> str:
        """The official file's name ("ViT-B-32.pt"), so a hand-downloaded copy is found."""
        return self.url.rsplit("/", 1)[-1]

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
_CLIP = [   # name, SHA-256 (the URL's path component), file, input size
    ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt", 224),
    ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt", 224),
    ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt", 288),
    ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt", 384),
    ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt", 448),
    ("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt", 224),
    ("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt", 224),
    ("ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt", 224),
    ("ViT-L/14@336px", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
     "ViT-L-14-336px.pt", 336),
]
_CONVNEXT_IM1K = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/"

CARDS: Dict[str, ModelCard] = {}
for _name, _sha, _file, _size in _CLIP:
    CARDS[_name] = ModelCard(
        name=_name, url=f"{_OPENAI}{_sha}/{_file}", sha256=_sha, family="clip",
        input_size=_size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic",
        crop_pct=1.0, weights_stem=_name.replace("/", "-"))
CARDS["convnextv2_base"] = ModelCard(
    name="convnextv2_base", url=_CONVNEXT_IM1K + "convnextv2_base_1k_224_ema.pt", sha256=None,
    family="convnextv2", input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    interpolation="bicubic", crop_pct=0.875, weights_stem="convnextv2_base_1k_224_ema")
del _name, _sha, _file, _size

DEFAULT_MODELS = ("ViT-B/32", "RN101", "convnextv2_base")


def get_card(name: str) -> ModelCard:
    """The card of ``name``; KeyError listing the known names otherwise."""
    try:
        return CARDS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(CARDS)}") from None


def available(family: Optional[str] = None) -> List[str]:
    """Model names, optionally only those of one family ("clip", "convnextv2")."""
    return [n for n, c in CARDS.items() if family is None or c.family == family]


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
