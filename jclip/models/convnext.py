"""ConvNeXt-V2 (Woo et al. 2023) in Jittor, with the official layout and names.

One file in the spirit of openai/CLIP's model.py: the layers, the model, the
configurations and the loader that accepts both the official checkpoint naming
(facebookresearch/ConvNeXt-V2) and timm's.
"""
import re

import jittor as jt
import numpy as np
from jittor import nn

from ..catalog import architectures
from ..catalog.naming import is_timm_naming, timm_to_official

# Official configurations: size -> (depths, dims), from the catalogue's cards.
CONFIGS = {a.size: (a.depths, a.dims) for a in architectures("convnextv2").values()}


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------



class LayerNorm(nn.Module):
    """LayerNorm over the last axis (channels_last) or axis 1 (channels_first).

    channels_first normalises NCHW maps in place of a permute round trip; the
    statistics are computed the same way as torch's layer_norm (biased var).
    """

    def __init__(self, dim, eps=1e-6, channels_first=False):
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)
        self.eps = eps
        self.channels_first = channels_first

    def execute(self, x):
        if self.channels_first:
            mean = x.mean(1, keepdims=True)
            xc = x - mean
            var = (xc * xc).mean(1, keepdims=True)
            y = xc / jt.sqrt(var + self.eps)
            return y * self.weight.reshape(1, -1, 1, 1) + \
                self.bias.reshape(1, -1, 1, 1)
        mean = x.mean(-1, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(-1, keepdims=True)
        return xc / jt.sqrt(var + self.eps) * self.weight + self.bias


class GRN(nn.Module):
    """Global Response Normalization on NHWC input (official shapes (1,1,1,C))."""

    def __init__(self, dim):
        self.gamma = jt.zeros((1, 1, 1, dim))
        self.beta = jt.zeros((1, 1, 1, dim))

    def execute(self, x):
        gx = jt.sqrt((x * x).sum(dims=(1, 2), keepdims=True))
        nx = gx / (gx.mean(-1, keepdims=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


def drop_path(x, p, training):
    """Stochastic depth: drop the residual branch per sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = (jt.rand((x.shape[0],) + (1,) * (x.ndim - 1)) < keep).float32()
    return x * mask / keep


class Block(nn.Module):
    """dwconv 7x7 -> LN -> Linear C->4C -> GELU -> GRN -> Linear 4C->C, residual."""

    def __init__(self, dim, drop_path=0.0):
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = drop_path

    def execute(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NCHW -> NHWC for the MLP
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        y = y.permute(0, 3, 1, 2)
        return x + drop_path(y, self.drop_path, self.is_training())


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

class ConvNeXtV2(nn.Module):
    cpu_batch = 8   # images per forward on CPU (see jclip/batching.py)

    def __init__(self, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024),
                 num_classes=1000, drop_path_rate=0.0, in_chans=3):
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_chans, dims[0], 4, stride=4),
            LayerNorm(dims[0], channels_first=True)))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm(dims[i], channels_first=True),
                nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)))
        rates = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            self.stages.append(nn.Sequential(
                *[Block(dims[i], rates[cur + j]) for j in range(depths[i])]))
            cur += depths[i]
        self.norm = LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self):
        # Official init: trunc_normal(std=.02) conv/linear weights, zero biases.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                jt.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.assign(jt.zeros(m.bias.shape))

    def forward_features(self, x):
        """Pooled, pre-head features: LN(global mean of the last stage)."""
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
        return self.norm(x.mean((2, 3)))

    def forward(self, x):
        x = self.forward_features(x)
        return self.head(x) if self.head is not None else x

    def execute(self, x):
        return self.forward(x)

    def reset_head(self, num_classes):
        """Replace the classifier with a freshly initialised num_classes-way one."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)
        jt.init.trunc_normal_(self.head.weight, std=0.02)
        self.head.bias.assign(jt.zeros(num_classes))
        return self.head


def convnextv2(name, num_classes=1000, drop_path_rate=0.0):
    """A randomly initialised ConvNeXt-V2 of one of CONFIGS' sizes."""
    if name not in CONFIGS:
        raise ValueError(f"unknown ConvNeXt-V2 size {name!r}; "
                         f"choose from {', '.join(CONFIGS)}")
    depths, dims = CONFIGS[name]
    model = ConvNeXtV2(depths, dims, num_classes, drop_path_rate)
    model.name = name
    return model


def count_parameters(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def _unwrap(state_dict):
    # Official files hold {'model': sd}; training scripts often {'state_dict': sd}.
    for key in ("model", "state_dict", "model_ema"):
        if key in state_dict and isinstance(state_dict[key], dict):
            return state_dict[key]
    return state_dict


def infer_config(state_dict):
    """(size name or None, depths, dims, num_classes) from official-named keys."""
    try:
        dims = tuple(int(state_dict["downsample_layers.0.0.weight"].shape[0])
                     if i == 0 else
                     int(state_dict[f"downsample_layers.{i}.1.weight"].shape[0])
                     for i in range(4))
    except KeyError as e:
        raise ValueError(f"not a ConvNeXt-V2 state dict: no {e.args[0]}") from None
    depths = tuple(len({int(m.group(1)) for k in state_dict
                        for m in [re.match(rf"stages\.{s}\.(\d+)\.", k)] if m})
                   for s in range(4))
    head = state_dict.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    name = next((n for n, (d, c) in CONFIGS.items()
                 if d == depths and c == dims), None)
    return name, depths, dims, num_classes


def load_state_dict(model, state_dict, strict=True, source="state dict", skip=()):
    """Copy an official- or timm-named state dict into model.

    Keys starting with a prefix in skip are left as initialised and not
    reported. Returns (missing, unexpected, mis_shaped) key lists; with
    strict=True any of them raises ValueError naming the keys and the source.
    """
    sd = _unwrap(state_dict)
    if is_timm_naming(sd):
        sd = timm_to_official(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(skip))}
    own = {k: v for k, v in model.state_dict().items()
           if not k.startswith(tuple(skip))}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mis_shaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or mis_shaped):
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:10])}"
                 + (" ..." if len(keys) > 10 else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("mis-shaped", mis_shaped)) if keys]
        raise ValueError(f"{source} does not fit ConvNeXt-V2"
                         f"{' ' + model.name if getattr(model, 'name', None) else ''}: "
                         + "; ".join(parts))
    bad = {m.split(":")[0] for m in mis_shaped}
    for k, var in own.items():
        if k in sd and k not in bad:
            var.assign(jt.array(np.asarray(sd[k], dtype=np.float32)))
    return missing, unexpected, mis_shaped


def load_convnextv2(state_dict, name=None, num_classes=None,
                    drop_path_rate=0.0, strict=True, source="state dict"):
    """A ConvNeXt-V2 with the weights of a state dict (either naming); a
    weights file is read by ``jclip.pretrained.load_convnextv2_file``.

    The size is inferred from the weights (name, if given, is checked against
    it). num_classes=None keeps the checkpoint's head; another number replaces
    it with a fresh head of that size (the backbone still loads strictly).
    ``source`` names the weights in errors (the file, when there is one).
    Returns the model in eval mode; model.name is the size, model.source the
    file path (or None).
    """
    if not hasattr(state_dict, "items"):
        raise TypeError(f"load_convnextv2 takes a state dict, not {type(state_dict).__name__} "
                        "(read a weights file with jclip.pretrained.load_convnextv2_file)")
    sd = _unwrap(state_dict)
    if is_timm_naming(sd):
        sd = timm_to_official(sd)
    inferred, depths, dims, ckpt_classes = infer_config(sd)
    if name is not None and name != inferred:
        raise ValueError(f"{source}: weights are ConvNeXt-V2 "
                         f"{inferred or f'depths={depths} dims={dims}'}, not {name!r}")
    keep_head = num_classes is None or num_classes == ckpt_classes
    model = ConvNeXtV2(depths, dims, ckpt_classes if keep_head else num_classes,
                       drop_path_rate)
    model.name = inferred
    model.source = source if source != "state dict" else None
    load_state_dict(model, sd, strict, source,
                    skip=() if keep_head else ("head.",))
    model.eval()
    return model
