"""Which parameters of a CLIP train when it is fine-tuned: the projections,
the last N blocks of each tower, or everything (BatchNorm statistics never).
"""
import re
from typing import Any, List

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _block_prefixes(model: Any, tower: str, n: int) -> List[str]:
    """State-dict prefixes of the last ``n`` blocks of a tower ("visual" or "text")."""
    if tower == "text":
        layers = model.transformer.layers
        return [f"transformer.resblocks.{i}." for i in range(layers - n, layers)]
    visual = model.visual
    if hasattr(visual, "transformer"):
        layers = visual.transformer.layers
        return [f"visual.transformer.resblocks.{i}." for i in range(layers - n, layers)]
    blocks = [f"visual.layer{s}.{i}." for s in (1, 2, 3, 4)
              for i in range(len(getattr(visual, f"layer{s}")))]
    return blocks[len(blocks) - n:]


def trainable_names(model: Any, trainable: str = "proj", train_text: bool = True) -> List[str]:
    """The state-dict names ``trainable`` selects, in state-dict order.

    Parameters: trainable: "proj", "last_blocks=N" or "all"; train_text:
    False leaves the text tower frozen.
    Returns: the names.  Raises ValueError for an unknown choice or more
    blocks than a tower has.
    """
    keys = [k for k in model.state_dict() if not k.endswith(BN_BUFFERS) and k != "logit_scale"]
    resnet = not hasattr(model.visual, "transformer")
    image_proj = ["visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"] if resnet \
        else ["visual.proj"]
    match = re.fullmatch(r"last_blocks=(\d+)", str(trainable))
    if trainable == "proj":
        chosen = set(image_proj) | {"text_projection"}
    elif match:
        n = int(match.group(1))
        depth = {"visual": len(_block_prefixes(model, "visual", 10 ** 6)),
                 "text": model.transformer.layers}
        if not 1 <= n <= min(depth.values()):
            raise ValueError(f"last_blocks={n}: the towers have {depth['visual']} (image) and "
                             f"{depth['text']} (text) blocks")
        prefixes = _block_prefixes(model, "visual", n) + _block_prefixes(model, "text", n) + \
            ["visual.attnpool." if resnet else "visual.ln_post.", "ln_final."]
        chosen = {k for k in keys if k.startswith(tuple(prefixes))} | set(image_proj) | {"text_projection"}
    elif trainable == "all":
        chosen = set(keys)
    else:
        raise ValueError(f"trainable must be 'proj', 'last_blocks=N' or 'all', not {trainable!r}")
    return [k for k in keys if k in chosen and (train_text or k.startswith("visual."))]
