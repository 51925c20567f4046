"""The catalogue's one schema: architectures and model cards, checked when read.

A catalogue file (package data here, or one given to
``jclip.add_model_config``) is a JSON object::

    {"_doc": "...",
     "defaults": {card fields every model of the file shares},
     "architectures": {name: {"family": "clip", "embed_dim": ..., "activation": ...,
                              "vision": {...}, "text": {...}}
                            | {"family": "convnextv2", "depths": [4 ints], "dims": [4 ints]}},
     "models": {name: {"arch": name, "url": ..., "sha256": ..., "hub": ..., "weights_stem": ...,
                       "input_size", "mean", "std", "interpolation", "crop_pct", "resize_mode"}},
     "not_built": {architecture prefix: why jclip does not build it}}

Every section is optional.  A mistake is one :class:`CatalogError` naming
the file and the key.  Pure Python: no Jittor, no numpy.
"""
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

ACTIVATIONS = ("quick_gelu", "gelu")
VISION_POOLS = ("tok", "avg")       # class token / mean of the patch tokens
TEXT_POOLS = ("argmax", "last")     # the EOT token (largest id) / the last position
FAMILIES = ("clip", "convnextv2")
INTERPOLATIONS = ("bicubic", "bilinear")
RESIZE_MODES = ("shortest", "longest", "squash")
# jclip's own weights formats, preferred first (load looks for them in order).
WEIGHTS_FORMATS = ("safetensors", "pkl")
TOP_KEYS = ("_doc", "defaults", "architectures", "models", "not_built")
HF_HUB = "https://huggingface.co/"
# open_clip's file names on the hub; safetensors first (no pickle), as open_clip prefers.
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class CatalogError(ValueError):
    """A catalogue entry is malformed; the message names the file and the key."""


class UnsupportedArchitecture(ValueError):
    """An architecture jclip does not build; the message says why."""


@dataclass(frozen=True)
class VisionArch:
    """The image tower.  ``layers`` an int for a ViT, four ints for OpenAI's
    ModifiedResNet (then ``patch_size`` is None); ``mlp_width`` the ViT MLP's
    hidden size; ``ln_pre`` a LayerNorm before the transformer; ``pool`` "tok"
    or "avg"; ``final_ln_after_pool`` ln_post after pooling instead of before."""
    image_size: int
    layers: Union[int, Tuple[int, int, int, int]]
    width: int
    heads: int
    patch_size: Optional[int] = None
    mlp_width: Optional[int] = None
    ln_pre: bool = True
    pool: str = "tok"
    final_ln_after_pool: bool = False


@dataclass(frozen=True)
class TextArch:
    """The causal text transformer; ``pool`` "argmax" (the EOT token) or "last"."""
    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    pool: str = "argmax"


@dataclass(frozen=True)
class ClipArch:
    """One CLIP architecture: sizes and the choices the state dict does not show."""
    name: str
    embed_dim: int
    activation: str
    vision: VisionArch
    text: TextArch
    family = "clip"

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision.layers, int)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (as in a catalogue file, without the name)."""
        d = asdict(self)
        d.pop("name")
        return d


@dataclass(frozen=True)
class ConvNeXtArch:
    """One ConvNeXt-V2 size: blocks per stage and channels per stage."""
    name: str
    depths: Tuple[int, int, int, int]
    dims: Tuple[int, int, int, int]
    family = "convnextv2"

    @property
    def size(self) -> str:
        """The size's short name ("base" of "convnextv2_base")."""
        return self.name[len("convnextv2_"):] if self.name.startswith("convnextv2_") else self.name


Architecture = Union[ClipArch, ConvNeXtArch]


@dataclass(frozen=True)
class ModelCard:
    """What jclip knows about one model.

    name: the name users type ("ViT-B/32"); url: the official checkpoint;
    sha256: its published SHA-256 (None when unpublished); family: "clip" or
    "convnextv2"; input_size: the square crop fed to the network;
    mean/std: per-channel normalisation; interpolation: resize filter;
    crop_pct: crop / resized shortest side (1.0 for CLIP: resize the shortest
    side to input_size, then centre-crop); weights_stem: the converted file's
    name without its format suffix; arch: the architecture's name
    (``architecture`` holds its facts); hub: the Hugging Face repository of
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
    # The facts of ``arch`` (a ClipArch or a ConvNeXtArch), resolved when the card is read.
    architecture: Optional[Architecture] = field(default=None, compare=False, repr=False)

    @property
    def source_filename(self) -> str:
        """The official file's name ("ViT-B-32.pt"), so a hand-downloaded copy
        is found; a hub file keeps its name in a folder named after the model
        ("ViT-B-32-laion2b_s34b_b79k/open_clip_model.safetensors")."""
        base = self.url.rsplit("/", 1)[-1]
        return f"{self.weights_stem}/{base}" if self.hub else base

    @property
    def resize(self) -> int:
        """Shortest side after resizing, before the centre crop."""
        return int(self.input_size / self.crop_pct)

    def weights_filename(self, fmt: str = "safetensors") -> str:
        """Converted weights file name in format ``fmt`` ("safetensors" or "pkl")."""
        if fmt not in WEIGHTS_FORMATS:
            raise ValueError(f"unknown weights format {fmt!r}; known: {', '.join(WEIGHTS_FORMATS)}")
        return f"{self.weights_stem}.{fmt}"


# ------------------------------------------------------------ validation

def _fail(where: str, what: str) -> None:
    raise CatalogError(f"{where}: {what}")


def _int(value: Any, where: str, positive: bool = True) -> int:
    if type(value) is not int or (positive and value <= 0):
        _fail(where, f"{value!r} is not a positive integer")
    return value


def _choice(value: Any, choices: Tuple[str, ...], where: str) -> str:
    if value not in choices:
        _fail(where, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _fields(d: Any, cls, where: str, required: Tuple[str, ...]) -> Dict[str, Any]:
    """``d`` as a dict of ``cls``'s fields, every required one present, no other."""
    if not isinstance(d, Mapping):
        _fail(where, f"must be a JSON object, not {type(d).__name__}")
    known = cls.__dataclass_fields__
    extra = sorted(set(d) - set(known))
    if extra:
        _fail(f"{where}.{extra[0]}", f"unknown key (known: {', '.join(known)})")
    missing = [k for k in required if k not in d]
    if missing:
        _fail(f"{where}.{missing[0]}", "missing")
    return dict(d)


def architecture_from_dict(name: str, d: Any, where: str) -> Architecture:
    """A validated architecture from its JSON form (CatalogError naming the key;
    UnsupportedArchitecture for choices jclip does not build)."""
    if not isinstance(d, Mapping):
        _fail(where, f"must be a JSON object, not {type(d).__name__}")
    d = dict(d)
    family = _choice(d.pop("family", "clip"), FAMILIES, f"{where}.family")
    if family == "convnextv2":
        _fields(d, ConvNeXtArch, where, ("depths", "dims"))
        four = {}
        for key in ("depths", "dims"):
            value = d[key]
            if not isinstance(value, (list, tuple)) or len(value) != 4:
                _fail(f"{where}.{key}", "must be four positive integers")
            four[key] = tuple(_int(v, f"{where}.{key}") for v in value)
        return ConvNeXtArch(name=name, **four)
    top = _fields(d, ClipArch, where, ("embed_dim", "activation", "vision", "text"))
    v = _fields(top["vision"], VisionArch, f"{where}.vision", ("image_size", "layers", "width", "heads"))
    t = _fields(top["text"], TextArch, f"{where}.text",
                ("context_length", "vocab_size", "width", "heads", "layers", "mlp_width"))
    if isinstance(v["layers"], list):
        if len(v["layers"]) != 4:
            _fail(f"{where}.vision.layers", "a ResNet has four stages")
        v["layers"] = tuple(_int(n, f"{where}.vision.layers") for n in v["layers"])
    else:
        _int(v["layers"], f"{where}.vision.layers")
    for key in ("image_size", "width", "heads"):
        _int(v[key], f"{where}.vision.{key}")
    for key in ("context_length", "vocab_size", "width", "heads", "layers", "mlp_width"):
        _int(t[key], f"{where}.text.{key}")
    arch = ClipArch(name=name, embed_dim=_int(top["embed_dim"], f"{where}.embed_dim"),
                    activation=_choice(top["activation"], ACTIVATIONS, f"{where}.activation"),
                    vision=VisionArch(**v), text=TextArch(**t))
    _choice(arch.vision.pool, VISION_POOLS, f"{where}.vision.pool")
    _choice(arch.text.pool, TEXT_POOLS, f"{where}.text.pool")
    if arch.is_vit:
        _int(arch.vision.patch_size, f"{where}.vision.patch_size")
        _int(arch.vision.mlp_width, f"{where}.vision.mlp_width")
    return arch


_CARD_REQUIRED = ("url", "weights_stem", "arch", "mean", "std", "interpolation")


def card_from_dict(name: str, d: Any, defaults: Mapping[str, Any], archs: Mapping[str, Architecture],
                   where: str) -> ModelCard:
    """A validated card; ``archs`` the architectures known (its ``arch`` must be one).
    ``input_size`` defaults to a CLIP architecture's image size, ``family`` is
    the architecture's, ``crop_pct`` 1.0 and ``weights_stem`` the name with
    "/" replaced by "-"."""
    if not isinstance(d, Mapping):
        _fail(where, f"must be a JSON object, not {type(d).__name__}")
    given = {**defaults, **d}
    for derived in ("family", "architecture"):
        if derived in given:
            _fail(f"{where}.{derived}", "comes from the card's arch; do not set it")
    given.setdefault("weights_stem", name.replace("/", "-"))
    given.setdefault("sha256", None)
    given.setdefault("crop_pct", 1.0)
    if isinstance(given.get("hub"), str):   # a hub card's file: open_clip's preferred one
        given.setdefault("url", f"{HF_HUB}{given['hub']}/resolve/main/{HUB_FILES[0]}")
    arch = archs.get(given.get("arch"))
    if "arch" in given and arch is None:
        _fail(f"{where}.arch", f"unknown architecture {given['arch']!r}")
    if arch is not None and arch.family == "clip":
        given.setdefault("input_size", arch.vision.image_size)
    c = _fields(dict(given, name=name, family="clip"), ModelCard, where, _CARD_REQUIRED + ("input_size",))
    c["family"], c["architecture"] = arch.family, arch
    for key in ("mean", "std"):
        value = c[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(type(x) in (int, float) and x >= 0 for x in value)):
            _fail(f"{where}.{key}", "must be three non-negative numbers")
        c[key] = tuple(float(x) for x in value)
    for key in ("url", "weights_stem"):
        if not isinstance(c[key], str) or not c[key]:
            _fail(f"{where}.{key}", "must be a non-empty string")
    sha = c["sha256"]
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(ch in "0123456789abcdef" for ch in sha)):
        _fail(f"{where}.sha256", "must be 64 lowercase hex digits or null")
    if c.get("hub") is not None and (not isinstance(c["hub"], str) or c["hub"].count("/") != 1):
        _fail(f"{where}.hub", "must be a hub repository 'owner/name'")
    _int(c["input_size"], f"{where}.input_size")
    if type(c["crop_pct"]) not in (int, float) or not 0 < c["crop_pct"] <= 1:
        _fail(f"{where}.crop_pct", "must be a number in (0, 1]")
    _choice(c["interpolation"], INTERPOLATIONS, f"{where}.interpolation")
    _choice(c.get("resize_mode", "shortest"), RESIZE_MODES, f"{where}.resize_mode")
    return ModelCard(**c)
