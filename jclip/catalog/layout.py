"""State-dict layouts: the keys and shapes an architecture's checkpoint holds.

:func:`state_dict_layout` is the one description of a layout, derived from an
architecture's facts (OpenAI's key names for CLIP, which open_clip keeps; the
official names for ConvNeXt-V2).  The budget counts parameters from it, the
converter and the loaders check state dicts against it
(:func:`check_state_dict`, after inferring the facts the keys show), and
tests/test_catalog.py compares it with open_clip's and timm's own state
dicts.  Pure Python: shapes are tuples, tensors only need ``.shape``.
"""
import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from .naming import timm_to_official
from .schema import Architecture, ClipArch, ConvNeXtArch, TextArch, VisionArch

Shape = Tuple[int, ...]
Layout = Dict[str, Shape]
# Buffers torch files may lack (saved before torch 0.4.1 had them).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class StateDictError(ValueError):
    """A state dict does not fit its architecture; the message names the source and the tensor."""


# ------------------------------------------------------------------ layouts

def _resblocks(prefix: str, width: int, layers: int, mlp: int) -> Layout:
    s = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        s.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                  p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                  p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                  p + "mlp.c_fc.weight": (mlp, width), p + "mlp.c_fc.bias": (mlp,),
                  p + "mlp.c_proj.weight": (width, mlp), p + "mlp.c_proj.bias": (width,),
                  p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
    return s


def _bn(name: str, c: int) -> Layout:
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


def _vit(v: VisionArch, embed: int) -> Layout:
    w, p = v.width, v.patch_size
    grid = v.image_size // p
    s = {"visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
         "visual.proj": (w, embed), "visual.conv1.weight": (w, 3, p, p),
         "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)}
    if v.ln_pre:
        s.update({"visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)})
    s.update(_resblocks("visual.transformer", w, v.layers, v.mlp_width))
    return s


def _modified_resnet(v: VisionArch, embed: int) -> Layout:
    """OpenAI's ModifiedResNet: a 3-conv stem, bottlenecks (4x expansion),
    attention pooling over the final 1/32-scale grid."""
    s, w = {}, v.width
    for i, (cin, cout) in enumerate(((3, w // 2), (w // 2, w // 2), (w // 2, w)), 1):
        s[f"visual.conv{i}.weight"] = (cout, cin, 3, 3)
        s.update(_bn(f"visual.bn{i}", cout))
    inplanes = w
    for li, (blocks, planes) in enumerate(zip(v.layers, (w, 2 * w, 4 * w, 8 * w)), 1):
        for b in range(blocks):
            p = f"visual.layer{li}.{b}"
            s.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1),
                      f"{p}.conv2.weight": (planes, planes, 3, 3),
                      f"{p}.conv3.weight": (planes * 4, planes, 1, 1)})
            for j, c in ((1, planes), (2, planes), (3, planes * 4)):
                s.update(_bn(f"{p}.bn{j}", c))
            if b == 0 and (li > 1 or inplanes != planes * 4):
                s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                s.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    width = w * 32
    sp = v.image_size // 32
    s["visual.attnpool.positional_embedding"] = (sp * sp + 1, width)
    for k in ("q", "k", "v"):
        s.update({f"visual.attnpool.{k}_proj.weight": (width, width),
                  f"visual.attnpool.{k}_proj.bias": (width,)})
    s.update({"visual.attnpool.c_proj.weight": (embed, width), "visual.attnpool.c_proj.bias": (embed,)})
    return s


def _clip(arch: ClipArch) -> Layout:
    embed, t = arch.embed_dim, arch.text
    s = (_vit if arch.is_vit else _modified_resnet)(arch.vision, embed)
    tw = t.width
    s.update({"token_embedding.weight": (t.vocab_size, tw), "positional_embedding": (t.context_length, tw),
              "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, embed),
              "logit_scale": ()})
    s.update(_resblocks("transformer", tw, t.layers, t.mlp_width))
    return s


def _convnext(arch: ConvNeXtArch, num_classes: int) -> Layout:
    depths, dims = arch.depths, arch.dims
    s = {"downsample_layers.0.0.weight": (dims[0], 3, 4, 4), "downsample_layers.0.0.bias": (dims[0],),
         "downsample_layers.0.1.weight": (dims[0],), "downsample_layers.0.1.bias": (dims[0],)}
    for i in range(1, 4):
        s.update({f"downsample_layers.{i}.0.weight": (dims[i - 1],),
                  f"downsample_layers.{i}.0.bias": (dims[i - 1],),
                  f"downsample_layers.{i}.1.weight": (dims[i], dims[i - 1], 2, 2),
                  f"downsample_layers.{i}.1.bias": (dims[i],)})
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{i}.{b}."
            s.update({p + "dwconv.weight": (c, 1, 7, 7), p + "dwconv.bias": (c,),
                      p + "norm.weight": (c,), p + "norm.bias": (c,),
                      p + "pwconv1.weight": (4 * c, c), p + "pwconv1.bias": (4 * c,),
                      p + "grn.gamma": (1, 1, 1, 4 * c), p + "grn.beta": (1, 1, 1, 4 * c),
                      p + "pwconv2.weight": (c, 4 * c), p + "pwconv2.bias": (c,)})
    s.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],)})
    if num_classes:
        s.update({"head.weight": (num_classes, dims[-1]), "head.bias": (num_classes,)})
    return s


def state_dict_layout(arch: Architecture, num_classes: int = 1000) -> Layout:
    """``{key: shape}`` of a checkpoint of ``arch`` (a ClipArch or a
    ConvNeXtArch; ``num_classes`` the ConvNeXt head's size, 0 for none),
    BatchNorm statistics included, in the order the reference models list them."""
    if isinstance(arch, ClipArch):
        return _clip(arch)
    if isinstance(arch, ConvNeXtArch):
        return _convnext(arch, num_classes)
    raise TypeError(f"not an architecture: {type(arch).__name__}")


# ---------------------------------------------------- facts from a state dict

def detect_family(state_dict: Mapping[str, Any], source: str = "checkpoint") -> str:
    """"clip" or "convnextv2" from the keys; StateDictError otherwise."""
    keys = state_dict.keys()
    if "token_embedding.weight" in keys and any(k.startswith("visual.") for k in keys):
        return "clip"
    if any(k.startswith("downsample_layers.") for k in keys) or (
            any(k.startswith("stem.") for k in keys) and any(k.startswith("stages.0.blocks.") for k in keys)):
        return "convnextv2"
    sample = ", ".join(list(keys)[:5])
    raise StateDictError(f"{source}: unknown architecture (neither CLIP nor ConvNeXt-V2; keys start {sample})")


class _Shapes:
    """Shape look-ups in a state dict that name the source and the key."""

    def __init__(self, state_dict: Mapping[str, Any], source: str):
        self.sd, self.source = state_dict, source

    def __call__(self, key: str, dim: int) -> int:
        if key not in self.sd:
            raise StateDictError(f"{self.source}: missing tensor {key!r}")
        shape = tuple(getattr(self.sd[key], "shape", ()))
        if len(shape) <= dim:
            raise StateDictError(f"{self.source}: tensor {key!r} has shape {shape}, expected "
                                 f"at least {dim + 1} dimensions")
        return int(shape[dim])

    def count(self, pattern: str) -> int:
        """1 + the largest index ``(\\d+)`` in keys matching ``pattern`` (0 for none)."""
        rx = re.compile(pattern)
        found = [int(m.group(1)) for k in self.sd for m in [rx.match(k)] if m]
        return max(found) + 1 if found else 0


def _grid_side(tokens: int) -> int:
    """The side of a square token grid plus a class token (0 when not square)."""
    side = math.isqrt(max(tokens - 1, 0))
    return side if side * side == tokens - 1 else 0


def clip_facts(state_dict: Mapping[str, Any], source: str = "checkpoint") -> ClipArch:
    """The architecture an OpenAI-named CLIP state dict shows (sizes only:
    heads, activation and pooling are not in the keys and get OpenAI's choices)."""
    dim = _Shapes(state_dict, source)
    embed = dim("text_projection", 1)
    if "visual.proj" in state_dict:
        w, patch = dim("visual.conv1.weight", 0), dim("visual.conv1.weight", 2)
        layers = dim.count(r"visual\.transformer\.resblocks\.(\d+)\.")
        vision = VisionArch(
            image_size=_grid_side(dim("visual.positional_embedding", 0)) * patch, layers=layers, width=w,
            heads=max(w // 64, 1), patch_size=patch,
            mlp_width=dim("visual.transformer.resblocks.0.mlp.c_fc.weight", 0) if layers else 4 * w,
            ln_pre="visual.ln_pre.weight" in state_dict)
    else:
        w = dim("visual.layer1.0.conv1.weight", 0)
        layers = tuple(dim.count(rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
        side = _grid_side(dim("visual.attnpool.positional_embedding", 0))
        vision = VisionArch(image_size=side * 32, layers=layers, width=w, heads=max(w * 32 // 64, 1))
    tw = dim("ln_final.weight", 0)
    tl = dim.count(r"transformer\.resblocks\.(\d+)\.")
    text = TextArch(context_length=dim("positional_embedding", 0), vocab_size=dim("token_embedding.weight", 0),
                    width=tw, heads=max(tw // 64, 1), layers=tl,
                    mlp_width=dim("transformer.resblocks.0.mlp.c_fc.weight", 0) if tl else 4 * tw)
    return ClipArch(name="inferred", embed_dim=embed, activation="quick_gelu", vision=vision, text=text)


def convnext_facts(state_dict: Mapping[str, Any], source: str = "checkpoint") -> Tuple[ConvNeXtArch, int]:
    """(architecture, head size or 0) an official-named ConvNeXt-V2 state dict shows."""
    dim = _Shapes(state_dict, source)
    dims = (dim("downsample_layers.0.0.weight", 0),) + tuple(
        dim(f"downsample_layers.{i}.1.weight", 0) for i in range(1, 4))
    depths = tuple(dim.count(rf"stages\.{s}\.(\d+)\.") for s in range(4))
    head = dim("head.weight", 0) if "head.weight" in state_dict else 0
    return ConvNeXtArch(name="inferred", depths=depths, dims=dims), head


def check_state_dict(state_dict: Mapping[str, Any], layout: Layout, source: str = "checkpoint") -> None:
    """StateDictError naming the first tensor of ``layout`` that is missing or
    mis-shaped (a scalar may be stored as any one-element shape).  Keys
    outside the layout are left to the model loader, which names them."""
    for key, want in layout.items():
        if key not in state_dict:
            if key.endswith(OPTIONAL_SUFFIXES):
                continue
            raise StateDictError(f"{source}: missing tensor {key!r}")
        got = tuple(int(d) for d in getattr(state_dict[key], "shape", ()))
        if got != want and not (want == () and math.prod(got) == 1):
            raise StateDictError(f"{source}: tensor {key!r} has shape {got}, expected {want}")


def prepare_state_dict(state_dict: Mapping[str, Any], source: str = "checkpoint",
                       arch: Optional[Architecture] = None) -> Tuple[str, Dict[str, Any]]:
    """(family, official-named state dict) after checking it against the
    layout of ``arch`` (default: the architecture its keys show)."""
    family = detect_family(state_dict, source)
    if family == "convnextv2":
        if any(k.startswith("stem.") or ".blocks." in k for k in state_dict):
            state_dict = timm_to_official(state_dict)
        inferred, head = convnext_facts(state_dict, source)
        layout = state_dict_layout(arch or inferred, head)
    else:
        layout = state_dict_layout(arch or clip_facts(state_dict, source))
    check_state_dict(state_dict, layout, source)
    return family, state_dict
