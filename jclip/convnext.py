"""ConvNeXt-V2 (Woo et al. 2023) in Jittor, with the official layout and names.

One file in the spirit of openai/CLIP's model.py: the layers, the model, the
configurations and the loader that accepts both the official checkpoint naming
(facebookresearch/ConvNeXt-V2) and timm's.
"""
import re

import numpy as np

# Official configurations: name -> (depths, dims).
CONFIGS = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}


# --------------------------------------------------------------------------
# Checkpoint naming
# --------------------------------------------------------------------------

def is_timm_naming(state_dict):
    """True when the keys follow timm's ConvNeXt naming (stem.*, head.fc.*)."""
    return any(k.startswith(("stem.", "head.fc.", "head.norm.")) or ".blocks." in k
               for k in state_dict)


def timm_to_official(state_dict):
    """Rename a timm ConvNeXt-V2 state dict to the official names and shapes.

    timm stores GRN gamma/beta as (4C,) (official: (1, 1, 1, 4C)) and, for the
    small models built with conv_mlp, the MLP as 1x1 convs (4C, C, 1, 1)
    (official: Linear (4C, C)). Keys already in official naming pass through.
    Values may be numpy arrays or anything with .reshape (torch tensors, in
    tests).
    """
    out = {}
    for k, v in state_dict.items():
        n = k
        n = re.sub(r"^stem\.([01])\.", r"downsample_layers.0.\1.", n)
        n = re.sub(r"^stages\.(\d+)\.downsample\.([01])\.",
                   r"downsample_layers.\1.\2.", n)
        n = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", n)
        n = n.replace(".conv_dw.", ".dwconv.")
        n = n.replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
        if ".mlp.grn." in n:
            n = n.replace(".mlp.grn.weight", ".grn.gamma").replace(
                ".mlp.grn.bias", ".grn.beta")
            v = v.reshape(1, 1, 1, -1)
        if re.search(r"\.pwconv[12]\.weight$", n) and len(v.shape) == 4:
            v = v.reshape(v.shape[0], v.shape[1])
        if n.startswith("head.norm."):
            n = n[len("head."):]
        elif n.startswith("head.fc."):
            n = "head." + n[len("head.fc."):]
        out[n] = v
    return out
