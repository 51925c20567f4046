"""CoCoOp (Zhou et al., CVPR'22): CoOp's shared context plus a bias computed
from each image, and reading either prompt learner back from its file.

pi(x) = Linear(d, d/16) -> ReLU -> Linear(d/16, width) of the normalised
image feature is added to every context vector, so each image gets its own
prompts: one text-encoder pass per (image, class) pair, in blocks of at most
``chunk_size`` prompts.
"""
import math
from typing import Any, Optional, Sequence

import numpy as np
import jittor as jt

from .head_file import FileFormatError, read_raw
from .coop import CoOp


def _uniform(rng, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)             # torch nn.Linear's default init
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class CoCoOp(CoOp):
    """CoCoOp: CoOp's shared context plus a meta-net bias per image.

    pi = Linear(D, D // 16) -> ReLU -> Linear(D // 16, width), applied to the
    normalised image feature (D = embed_dim); torch layout (out, in).
    Parameters: as CoOp (class_specific must stay False), with the official
    config's epochs 10 and batch size 1.
    """

    method = "cocoop"

    def __init__(self, model: Any, class_names: Optional[Sequence[str]], n_ctx: int = 4,
                 ctx_init: Optional[str] = "a photo of a", class_specific: bool = False,
                 position: str = "end", epochs: int = 10, batch_size: int = 1, lr: float = 0.002,
                 momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, chunk_size: int = 512, seed: int = 0, progress: bool = False,
                 episode: Optional[Any] = None, episodes_per_epoch: int = 100,
                 val_class_names: Optional[Sequence[str]] = None):
        self._keep_params(locals())     # CoOp's parameters, with CoCoOp's defaults

    def _init_extra(self, rng):
        d, h = self.embed_dim, max(1, self.embed_dim // 16)
        width = self.model.token_embedding.weight.shape[1]
        self.params_["meta_net.linear1.weight"] = _uniform(rng, (h, d), d)
        self.params_["meta_net.linear1.bias"] = _uniform(rng, (h,), d)
        self.params_["meta_net.linear2.weight"] = _uniform(rng, (width, h), h)
        self.params_["meta_net.linear2.bias"] = _uniform(rng, (width,), h)

    def _blocks(self, batch, num_classes):
        """Whole images per block while classes fit a chunk, else one image
        and classes in chunks: at most chunk_size (image, class) prompts."""
        step = max(1, int(self.chunk_size))
        if num_classes <= step:
            per = step // num_classes
            return [(np.arange(b, min(b + per, batch)), np.arange(num_classes))
                    for b in range(0, batch, per)]
        return [(np.array([b]), np.arange(c, min(c + step, num_classes)))
                for b in range(batch) for c in range(0, num_classes, step)]

    def _block_logits(self, p, image_features, img_ids, cls_ids, table):
        xb = image_features[img_ids]                                     # (B, D)
        hidden = jt.nn.relu(jt.matmul(xb, p["meta_net.linear1.weight"].transpose())
                            + p["meta_net.linear1.bias"])
        bias = jt.matmul(hidden, p["meta_net.linear2.weight"].transpose()) + p["meta_net.linear2.bias"]
        ctx = p["ctx"] + bias.unsqueeze(1)                               # (B, M, width)
        b, c = len(img_ids), len(cls_ids)
        ctx_ids = np.repeat(np.arange(b), c)
        text = table.encode(self.model, ctx, ctx_ids, np.tile(cls_ids, b))   # (B*C, D)
        text = text.reshape((b, c, -1))
        return self.logit_scale_ * (xb.unsqueeze(1) * text).sum(-1)


def load_prompt_learner(path, model: Any, check_backbone: bool = True) -> CoOp:
    """A CoOp / CoCoOp saved by ``save``, on ``model`` (the class is read
    from the file).  Raises ValueError naming the file when it is not a
    saved prompt learner or ``model`` is not the backbone it was trained on."""
    meta, _ = read_raw(path)
    classes = {"CoOp": CoOp, "CoCoOp": CoCoOp}
    if meta["head"] not in classes:
        raise FileFormatError(path, "head", f"holds a {meta['head']} head, not a prompt learner")
    return classes[meta["head"]](model, None).load(path, check_backbone)
