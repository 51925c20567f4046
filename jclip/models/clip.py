"""CLIP in Jittor: OpenAI's architecture and open_clip's transformer family,
state-dict compatible with their checkpoints.

Two image towers (VisionTransformer, ModifiedResNet) and the causal text
transformer, with OpenAI's parameter names (open_clip keeps them) so a
converted checkpoint loads without renaming.  ``build_model(state_dict)``
infers every size from an OpenAI state dict, so any OpenAI checkpoint (RN50 ...
RN50x64, ViT-B/32 ... ViT-L/14@336px) builds; open_clip's weights need their
architecture (GELU or QuickGELU, heads, pooling: ``models/open_clip.py``),
which ``build_model`` takes from the model card named in the file's meta or
from ``arch``.  Everything runs batch-first in fp32.
"""
from collections import OrderedDict
from typing import Any, Mapping, Optional, Union

import numpy as np
import jittor as jt
from jittor import nn

from ..catalog import ClipArch, get_architecture, open_clip_card
from .open_clip import build_kwargs
from .transformer import ACTIVATIONS, Linear, Transformer, attention, layer_norm

# Entries OpenAI's TorchScript archives carry that are not weights.
# (open_clip-built archives also carry the derived causal `attn_mask` buffer.)
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class VisionTransformer(nn.Module):
    """ViT image tower.  OpenAI's is ``ln_pre=True, pool="tok"``; open_clip's
    variants may drop ln_pre, average the patch tokens (``pool="avg"``) and
    apply ln_post after pooling (``final_ln_after_pool``)."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim,
                 activation="quick_gelu", mlp_width=None, ln_pre=True, pool="tok",
                 final_ln_after_pool=False):
        self.input_resolution, self.patch_size = input_resolution, patch_size
        self.pool, self.final_ln_after_pool = pool, final_ln_after_pool
        grid = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = jt.randn((width,)) * scale
        self.positional_embedding = jt.randn((grid * grid + 1, width)) * scale
        self.ln_pre = nn.LayerNorm(width) if ln_pre else None
        self.transformer = Transformer(width, layers, heads, activation, mlp_width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = jt.randn((width, output_dim)) * scale

    def patch_embed(self, x):
        # conv1 has stride == kernel: it is a matmul over non-overlapping
        # patches, which runs as one GEMM instead of a strided convolution.
        n, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        patches = x.reshape((n, c, gh, p, gw, p)).permute(0, 2, 4, 1, 3, 5).reshape((n * gh * gw, c * p * p))
        weight = self.conv1.weight.reshape((self.conv1.weight.shape[0], -1))
        return nn.matmul_transpose(patches, weight).reshape((n, gh * gw, -1))

    def execute(self, x):
        x = self.patch_embed(x)
        cls = self.class_embedding.reshape((1, 1, -1)).broadcast((x.shape[0], 1, x.shape[2]))
        x = jt.concat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(x if self.ln_pre is None else layer_norm(self.ln_pre, x))
        if self.pool == "tok":   # LayerNorm is per token: pooling first is exact
            pooled = layer_norm(self.ln_post, x[:, 0, :])
        elif self.final_ln_after_pool:
            pooled = layer_norm(self.ln_post, x[:, 1:, :].mean(dim=1))
        else:
            pooled = layer_norm(self.ln_post, x[:, 1:, :]).mean(dim=1)
        return jt.matmul(pooled, self.proj)


class Bottleneck(nn.Module):
    """ResNet bottleneck with OpenAI's anti-aliasing: stride by AvgPool after conv2."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else None
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def execute(self, x):
        out = nn.relu(self.bn1(self.conv1(x)))
        out = nn.relu(self.bn2(self.conv2(out)))
        if self.avgpool is not None:
            out = self.avgpool(out)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return nn.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Multi-head attention of the mean token over the feature map (QKV attention pooling)."""

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        self.num_heads = num_heads
        self.positional_embedding = jt.randn((spacial_dim ** 2 + 1, embed_dim)) / embed_dim ** 0.5
        self.k_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.c_proj = Linear(embed_dim, output_dim or embed_dim)

    def execute(self, x):
        n, c, h, w = x.shape
        x = x.reshape((n, c, h * w)).transpose((0, 2, 1))
        x = jt.concat([x.mean(dim=1, keepdims=True), x], dim=1) + self.positional_embedding

        def heads(t):
            return t.reshape((n, t.shape[1], self.num_heads, -1)).transpose((0, 2, 1, 3))

        out = attention(heads(self.q_proj(x[:, :1, :])), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(out.transpose((0, 2, 1, 3)).reshape((n, c)))


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem + avgpool, anti-aliased strides, attention pooling."""
    cpu_batch = 16   # images per forward on CPU (see jclip/batching.py)

    def __init__(self, layers, output_dim, heads, input_resolution=224, width=64):
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def execute(self, x):
        x = nn.relu(self.bn1(self.conv1(x)))
        x = nn.relu(self.bn2(self.conv2(x)))
        x = nn.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class CLIP(nn.Module):
    """CLIP.  The first ten arguments are OpenAI's; the keyword ones default to
    OpenAI's choices and take open_clip's (``open_clip.build_kwargs``):
    ``vision_heads`` (default width / 64), ``activation`` "quick_gelu" or
    "gelu", MLP widths (default 4 x width), ``ln_pre``, ``vision_pool`` "tok"
    or "avg", ``final_ln_after_pool``, ``text_pool`` "argmax" (the EOT token)
    or "last"."""

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers,
                 vision_heads=None, activation="quick_gelu", vision_mlp_width=None, text_mlp_width=None,
                 ln_pre=True, vision_pool="tok", final_ln_after_pool=False, text_pool="argmax"):
        if activation not in ACTIVATIONS or text_pool not in ("argmax", "last") or vision_pool not in ("tok", "avg"):
            raise ValueError(f"unsupported CLIP options: activation={activation!r}, "
                             f"text_pool={text_pool!r}, vision_pool={vision_pool!r}")
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(vision_layers, embed_dim, vision_heads or vision_width * 32 // 64,
                                         image_resolution, vision_width)
        else:
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width,
                                            vision_layers, vision_heads or vision_width // 64, embed_dim,
                                            activation, vision_mlp_width, ln_pre, vision_pool,
                                            final_ln_after_pool)
        self.context_length = context_length
        self.text_pool = text_pool
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       activation, text_mlp_width)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = jt.randn((context_length, transformer_width)) * 0.01
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = jt.randn((transformer_width, embed_dim)) * transformer_width ** -0.5
        # OpenAI stores a 0-d scalar; Jittor has no 0-d Vars, so it is kept as (1,).
        self.logit_scale = jt.array([np.log(1 / 0.07)], dtype="float32")

    @property
    def input_resolution(self):
        return self.visual.input_resolution

    def encode_image(self, images):
        """(N, 3, H, W) normalised images -> (N, embed_dim) features (not normalised)."""
        if not isinstance(images, jt.Var):
            images = jt.array(np.asarray(images, dtype=np.float32))
        return self.visual(images)

    def encode_text(self, tokens):
        """(N, context_length) token ids -> (N, embed_dim) features (not normalised)."""
        tokens = np.asarray(tokens.numpy() if isinstance(tokens, jt.Var) else tokens)
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"encode_text expects (N, <= {self.context_length}) token ids, got shape {tokens.shape}")
        if self.text_pool == "last":   # open_clip's pool_type "last": the final position
            eot = np.full(len(tokens), tokens.shape[1] - 1)
        else:
            eot = tokens.argmax(axis=-1)  # <|endoftext|> has the largest id
        # The mask is causal, so positions after the last EOT never influence
        # the EOT features: cutting them is exact and saves most of the work.
        length = int(eot.max()) + 1
        x = self.token_embedding(jt.array(tokens[:, :length].astype(np.int32)))
        return self.encode_token_embeddings(x, eot)

    def encode_token_embeddings(self, x, eot):
        """Text features from (N, L, width) token embeddings (prompt learning feeds
        learned context here) and each row's EOT position."""
        n, length, _ = x.shape
        x = x + self.positional_embedding[:length]
        x = layer_norm(self.ln_final, self.transformer(x, causal=True))
        rows = jt.array((np.arange(n) * length + np.asarray(eot)).astype(np.int32))
        return jt.matmul(x.reshape((n * length, -1))[rows], self.text_projection)

    def execute(self, images, tokens):
        image_features = normalize(self.encode_image(images))
        text_features = normalize(self.encode_text(tokens))
        logits_per_image = self.logit_scale.exp() * jt.matmul(image_features, text_features.transpose())
        return logits_per_image, logits_per_image.transpose()


def normalize(x, dim=-1):
    return x / jt.sqrt((x * x).sum(dim=dim, keepdims=True))


def _count_blocks(state_dict, prefix):
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def model_config(state_dict):
    """CLIP constructor arguments inferred from an OpenAI state dict (names as OpenAI's)."""
    try:
        if "visual.proj" in state_dict:
            vision_width = state_dict["visual.conv1.weight"].shape[0]
            vision_layers = len([k for k in state_dict
                                 if k.startswith("visual.transformer.resblocks.") and k.endswith(".attn.in_proj_weight")])
            vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
            grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            image_resolution = vision_patch_size * grid
        else:
            vision_layers = tuple(_count_blocks(state_dict, f"visual.layer{b}.") for b in (1, 2, 3, 4))
            vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            output_width = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision_patch_size = None
            image_resolution = output_width * 32
            if 0 in vision_layers:
                raise KeyError("visual.layer1-4 (ModifiedResNet needs four stages)")
        transformer_width = state_dict["ln_final.weight"].shape[0]
        return dict(
            embed_dim=state_dict["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            transformer_width=transformer_width,
            transformer_heads=transformer_width // 64,
            transformer_layers=_count_blocks(state_dict, "transformer.resblocks."),
        )
    except KeyError as e:
        raise KeyError(f"not an OpenAI CLIP state dict: missing {e.args[0]}") from None


def load_weights(module, state_dict, source="state dict", ignore=()):
    """Copy numpy arrays into ``module`` by name, strictly.

    Every parameter and buffer must be given once with its shape (0-d and (1,)
    scalars are interchangeable); anything else raises ValueError naming
    ``source`` and the keys.  ``ignore`` names keys to skip silently.
    """
    expected = module.state_dict()
    given = {k: v for k, v in state_dict.items()
             if k not in ignore and not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = [f"{k}: {tuple(np.shape(given[k]))} vs expected {tuple(expected[k].shape)}"
                 for k in sorted(set(given) & set(expected))
                 if int(np.prod(np.shape(given[k]))) != int(np.prod(expected[k].shape))
                 or (np.ndim(given[k]) > 1 and tuple(np.shape(given[k])) != tuple(expected[k].shape))]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped tensors", misshaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{what}: {shown}")
    if problems:
        raise ValueError(f"{source}: state dict does not fit {type(module).__name__}: " + "; ".join(problems))
    for name, var in expected.items():
        var.assign(jt.array(np.asarray(given[name], dtype=np.float32).reshape(var.shape)))
    return module


def architecture_for(meta: Optional[Mapping[str, Any]]) -> Optional[ClipArch]:
    """The architecture of a weights file whose jclip meta names an open_clip
    model ("ViT-B-32/laion2b_s34b_b79k"), else None (OpenAI's are inferred
    from the state dict)."""
    card = open_clip_card((meta or {}).get("model") or "")
    return card.architecture if card is not None else None


def build_model(state_dict: Mapping[str, Any], source: str = "state dict",
                arch: Union[ClipArch, str, None] = None,
                meta: Optional[Mapping[str, Any]] = None) -> "CLIP":
    """A CLIP in eval mode with ``state_dict``'s sizes and weights (fp32).

    Parameters: ``state_dict`` name -> array (OpenAI's key names, which
    open_clip keeps); ``source`` the file named in errors; ``arch`` a
    ``ClipArch`` or an architecture name ("ViT-B-32"), needed for open_clip
    weights (the state dict does not show GELU vs QuickGELU or the heads);
    ``meta`` a jclip file's meta: an open_clip model named there gives the
    architecture when ``arch`` is None.  Without either, the architecture is
    inferred as OpenAI's.
    Returns: the model; ValueError naming ``source`` when the state dict does
    not fit.
    """
    if isinstance(arch, str):
        arch = get_architecture(arch)
    arch = arch or architecture_for(meta)
    if arch is not None:
        config = build_kwargs(arch)
    else:
        try:
            config = model_config(state_dict)
        except KeyError as e:
            raise ValueError(f"{source}: {e.args[0]}") from None
    model = CLIP(**config)
    load_weights(model, state_dict, source, ignore=NON_WEIGHT_KEYS)
    model.architecture = arch
    model.eval()
    return model
