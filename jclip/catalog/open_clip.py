"""open_clip's names and model configurations in jclip's terms.

open_clip (mlfoundations/open_clip) names an architecture by its
``model_configs/<name>.json`` and a set of weights by a pretrained tag; jclip
names the pair ``"<architecture>/<tag>"`` ("ViT-B-32/laion2b_s34b_b79k").
Its state dicts use OpenAI's key names, so no renaming is needed; what the
keys do not say (GELU or QuickGELU, the number of heads, pooling) comes from
the architecture.  ``from_open_clip_config`` turns an open_clip model
configuration into jclip's facts and refuses, with the reason, what jclip does
not build (Hugging Face / timm towers, attentional pooling, layer scale, ...).
Pure Python.
"""
from typing import Any, Mapping, Tuple

from .schema import TEXT_POOLS, VISION_POOLS, ClipArch, TextArch, UnsupportedArchitecture, VisionArch


def _check(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise UnsupportedArchitecture(f"architecture {name}: {what}")


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
