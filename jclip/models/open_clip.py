"""open_clip's and OpenAI's architectures (catalogue facts) as arguments of jclip's CLIP.

The facts themselves (sizes, activation, pooling) live in the catalogue
(``jclip.catalog``); this is the one place that maps them onto
``jclip.models.clip.CLIP``'s constructor.
"""
from typing import Any, Dict

from ..catalog import ClipArch


def build_kwargs(arch: ClipArch) -> Dict[str, Any]:
    """Keyword arguments of ``jclip.models.clip.CLIP`` for ``arch``."""
    v, t = arch.vision, arch.text
    return dict(embed_dim=arch.embed_dim, image_resolution=v.image_size, vision_layers=v.layers,
                vision_width=v.width, vision_patch_size=v.patch_size, context_length=t.context_length,
                vocab_size=t.vocab_size, transformer_width=t.width, transformer_heads=t.heads,
                transformer_layers=t.layers, vision_heads=v.heads, activation=arch.activation,
                vision_mlp_width=v.mlp_width, text_mlp_width=t.mlp_width, ln_pre=v.ln_pre,
                vision_pool=v.pool, final_ln_after_pool=v.final_ln_after_pool, text_pool=t.pool)
