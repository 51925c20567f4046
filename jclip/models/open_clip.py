"""CLIP architectures as facts: OpenAI's and open_clip's transformer family.

No Jittor, no torch: pure data read from ``configs/architectures.json`` and
``configs/open_clip_pretrained.json`` (package data, in jclip's own format).
The model cards (``registry.py``) name an architecture; ``clip.py`` builds
it; the budget counts it.

open_clip (mlfoundations/open_clip) names an architecture by its
``model_configs/<name>.json`` and a set of weights by a pretrained tag; jclip
names the pair ``"<architecture>/<tag>"`` ("ViT-B-32/laion2b_s34b_b79k").
Its state dicts use OpenAI's key names, so no renaming is needed; what the
keys do not say (GELU or QuickGELU, the number of heads, pooling) comes from
the architecture.  ``from_open_clip_config`` turns an open_clip model
configuration into jclip's facts and refuses, with the reason, what jclip does
not build (Hugging Face / timm towers, attentional pooling, layer scale, ...).
"""
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Dict, Mapping, Optional, Tuple, Union

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
ARCHITECTURES_FILE = os.path.join(CONFIG_DIR, "architectures.json")
PRETRAINED_FILE = os.path.join(CONFIG_DIR, "open_clip_pretrained.json")

ACTIVATIONS = ("quick_gelu", "gelu")
VISION_POOLS = ("tok", "avg")       # class token / mean of the patch tokens
TEXT_POOLS = ("argmax", "last")     # the EOT token (largest id) / the last position


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

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision.layers, int)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (as in architectures.json, without the name)."""
        d = asdict(self)
        d.pop("name")
        return d


def _check(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise UnsupportedArchitecture(f"architecture {name}: {what}")


def _arch_from_dict(name: str, d: Mapping[str, Any]) -> ClipArch:
    """A ClipArch from its JSON form, validated (ValueError naming the field)."""
    try:
        v, t = dict(d["vision"]), dict(d["text"])
        if isinstance(v["layers"], list):
            v["layers"] = tuple(v["layers"])
        arch = ClipArch(name=name, embed_dim=int(d["embed_dim"]), activation=d["activation"],
                        vision=VisionArch(**v), text=TextArch(**t))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{ARCHITECTURES_FILE}: architecture {name}: malformed ({e})") from None
    _check(arch.activation in ACTIVATIONS, name, f"activation {arch.activation!r} (jclip has {ACTIVATIONS})")
    _check(arch.vision.pool in VISION_POOLS, name, f"image pooling {arch.vision.pool!r}")
    _check(arch.text.pool in TEXT_POOLS, name, f"text pooling {arch.text.pool!r}")
    _check(not arch.is_vit or (arch.vision.patch_size and arch.vision.mlp_width), name,
           "a ViT needs patch_size and mlp_width")
    return arch


@lru_cache(maxsize=None)
def _architectures() -> Dict[str, ClipArch]:
    with open(ARCHITECTURES_FILE, encoding="utf-8") as f:
        raw = json.load(f)
    return {n: _arch_from_dict(n, d) for n, d in raw.items() if not n.startswith("_")}


@lru_cache(maxsize=None)
def _pretrained_file() -> Dict[str, Any]:
    with open(PRETRAINED_FILE, encoding="utf-8") as f:
        return json.load(f)


def architectures() -> Dict[str, ClipArch]:
    """Every architecture jclip builds, by name (OpenAI's and open_clip's)."""
    return dict(_architectures())


def not_built() -> Dict[str, str]:
    """open_clip architectures (name prefixes) jclip knowingly does not build -> why."""
    return dict(_pretrained_file()["not_built"])


def get_architecture(name: str) -> ClipArch:
    """The architecture ``name``; UnsupportedArchitecture saying why for one
    jclip does not build (a KeyError-free, one-line message)."""
    archs = _architectures()
    if name in archs:
        return archs[name]
    reason = next((why for prefix, why in not_built().items() if name.startswith(prefix)), None)
    if reason:
        raise UnsupportedArchitecture(f"open_clip architecture {name} is not one jclip builds: {reason} "
                                      f"(jclip builds: {', '.join(archs)})")
    raise UnsupportedArchitecture(f"unknown CLIP architecture {name!r}; jclip builds: {', '.join(archs)}")


def unbuildable_reason(name: str) -> Optional[str]:
    """For an open_clip name ("coca_ViT-B-32/laion2b_s13b_b90k") whose
    architecture is one jclip knowingly does not build, the one-line reason;
    else None (a path or an unknown name is not refused here)."""
    arch, sep, tag = name.partition("/")
    if not sep or not tag or "/" in tag or arch in _architectures():
        return None
    if any(arch.startswith(prefix) for prefix in not_built()):
        try:
            get_architecture(arch)
        except UnsupportedArchitecture as e:
            return f"{name}: {e}"
    return None


def pretrained_tags() -> Dict[str, Dict[str, Any]]:
    """``"<architecture>/<tag>" -> {"hub", "mean", "std", "interpolation", "resize_mode"}``
    for the open_clip weights jclip knows (defaults filled in)."""
    raw = _pretrained_file()
    defaults = raw["defaults"]
    return {name: {**defaults, **entry} for name, entry in raw["pretrained"].items()}


def split_name(name: str) -> Tuple[str, str]:
    """("ViT-B-32", "laion2b_s34b_b79k") from "ViT-B-32/laion2b_s34b_b79k"."""
    arch, sep, tag = name.partition("/")
    if not sep or not tag or "/" in tag:
        raise ValueError(f"{name!r} is not an open_clip name (<architecture>/<pretrained tag>)")
    return arch, tag


# --------------------------------------------------- open_clip configurations

# open_clip config fields whose open_clip default is the only value jclip builds.
_VISION_DEFAULTS = {"ls_init_value": None, "attentional_pool": False, "pos_embed_type": "learnable",
                    "patch_dropout": 0.0, "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None,
                    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
                    "output_tokens": False}
_TEXT_DEFAULTS = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "proj_bias": False,
                  "proj_type": "linear", "hf_model_name": None, "hf_tokenizer_name": None,
                  "tokenizer_mode": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
                  "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                  "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "output_tokens": False}
_TOP_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "custom_text")


def from_open_clip_config(name: str, cfg: Mapping[str, Any]) -> ClipArch:
    """jclip's facts from an open_clip model configuration (the contents of
    open_clip's ``model_configs/<name>.json``), with open_clip's defaults
    (head width 64, MLP ratio 4, class-token pooling, EOT pooling, GELU unless
    ``quick_gelu``).  Raises UnsupportedArchitecture naming the field for
    anything jclip's CLIP does not build."""
    extra = sorted(set(cfg) - set(_TOP_KEYS))
    _check(not extra, name, f"unsupported settings {extra} (e.g. a CoCa/multimodal decoder)")
    _check(not cfg.get("custom_text"), name, "custom_text (a text tower jclip does not build)")
    v, t = dict(cfg["vision_cfg"]), dict(cfg.get("text_cfg", {}))
    for tower, given, defaults in (("vision", v, _VISION_DEFAULTS), ("text", t, _TEXT_DEFAULTS)):
        for key, default in defaults.items():
            value = given.get(key, default)
            _check(value == default or (key == "tokenizer_mode" and value in (None, "clip")), name,
                   f"{tower}_cfg.{key}={value!r} (jclip builds only {default!r}: OpenAI's tokenizer and "
                   "the plain transformer blocks)")
    _check(not t.get("tokenizer_kwargs"), name, "text_cfg.tokenizer_kwargs (jclip's tokenizer is OpenAI's)")
    head_width = v.get("head_width", 64)
    width = v.get("width", 768)
    layers = v.get("layers", 12)
    vit = not isinstance(layers, (list, tuple))
    vpool = v.get("pool_type", "tok")
    _check(vpool in VISION_POOLS, name, f"vision_cfg.pool_type={vpool!r}")
    tpool = t.get("pool_type", "argmax")
    _check(tpool in TEXT_POOLS, name, f"text_cfg.pool_type={tpool!r} (jclip pools at the EOT or the last token)")
    if vit:
        vision = VisionArch(image_size=v.get("image_size", 224), layers=layers, width=width,
                            heads=width // head_width, patch_size=v.get("patch_size", 16),
                            mlp_width=int(width * v.get("mlp_ratio", 4.0)), ln_pre=not v.get("no_ln_pre", False),
                            pool=vpool, final_ln_after_pool=bool(v.get("final_ln_after_pool", False)))
    else:
        _check(v.get("mlp_ratio", 4.0) == 4.0 and not v.get("no_ln_pre"), name, "ResNet options")
        vision = VisionArch(image_size=v.get("image_size", 224), layers=tuple(layers), width=width,
                            heads=width * 32 // head_width)
    twidth = t.get("width", 512)
    text = TextArch(context_length=t.get("context_length", 77), vocab_size=t.get("vocab_size", 49408),
                    width=twidth, heads=t.get("heads", 8), layers=t.get("layers", 12),
                    mlp_width=int(twidth * t.get("mlp_ratio", 4.0)), pool=tpool)
    return ClipArch(name=name, embed_dim=cfg["embed_dim"],
                    activation="quick_gelu" if cfg.get("quick_gelu") else "gelu", vision=vision, text=text)


def build_kwargs(arch: ClipArch) -> Dict[str, Any]:
    """Keyword arguments of ``jclip.models.clip.CLIP`` for ``arch``."""
    v, t = arch.vision, arch.text
    return dict(embed_dim=arch.embed_dim, image_resolution=v.image_size, vision_layers=v.layers,
                vision_width=v.width, vision_patch_size=v.patch_size, context_length=t.context_length,
                vocab_size=t.vocab_size, transformer_width=t.width, transformer_heads=t.heads,
                transformer_layers=t.layers, vision_heads=v.heads, activation=arch.activation,
                vision_mlp_width=v.mlp_width, text_mlp_width=t.mlp_width, ln_pre=v.ln_pre,
                vision_pool=v.pool, final_ln_after_pool=v.final_ln_after_pool, text_pool=t.pool)
