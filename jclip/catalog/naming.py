"""ConvNeXt-V2 checkpoint naming: timm's keys and shapes -> the official ones.

Plain dict and array work, no Jittor: the torch-free converter and the Jittor
model (jclip.models.convnext) both use it.
"""
import re


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
