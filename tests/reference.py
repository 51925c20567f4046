"""PyTorch references for the tests: OpenAI-architecture CLIPs built with open_clip.

Test-only (torch is never a jclip dependency).  Weights are random but
non-trivial: LayerNorm/BatchNorm affine parameters and BatchNorm running
statistics are randomised too, so a wrong normalisation path cannot pass.
"""
import numpy as np
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

# name -> (embed_dim, vision cfg, text cfg); full sizes as OpenAI's checkpoints.
CONFIGS = {
    "ViT-B/32": (512, dict(image_size=224, layers=12, width=768, patch_size=32),
                 dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)),
    "RN101": (512, dict(image_size=224, layers=(3, 4, 23, 3), width=64),
              dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)),
    "tiny-vit": (32, dict(image_size=32, layers=2, width=64, patch_size=8),
                 dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)),
    "tiny-rn": (32, dict(image_size=64, layers=(1, 2, 1, 1), width=16),
                dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)),
}


def build_reference(name, seed=0):
    """(torch model in eval mode, numpy state dict with OpenAI's key names)."""
    embed_dim, vision, text = CONFIGS[name]
    torch.manual_seed(seed)
    model = CLIP(embed_dim, CLIPVisionCfg(**vision), CLIPTextCfg(**text), quick_gelu=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
        # open_clip zero-initialises nothing else that matters, but its biases
        # start at zero: randomise them so a dropped bias is caught.
        for pname, p in model.named_parameters():
            if pname.endswith("bias") and float(p.abs().max()) == 0:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    model.eval()
    state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    return model, state


def reference_features(model, images, tokens):
    """Normalised image and text features from the torch reference, as numpy."""
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images), normalize=True).numpy()
        txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True).numpy()
    return img, txt


def clip_loss(ref, images, tokens):
    """open_clip's symmetric image-text cross-entropy over a batch of (image, caption)
    pairs, the reference for jclip.finetune.contrastive."""
    import torch.nn.functional as F
    img = F.normalize(ref.encode_image(images), dim=-1)
    txt = F.normalize(ref.encode_text(tokens), dim=-1)
    logits = ref.logit_scale.exp() * img @ txt.t()
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
