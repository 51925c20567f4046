"""Zero-shot CLIP classifier weights from class names and prompt templates.

Class weight = normalise(mean over templates of normalised text embeddings),
as in CLIP's ImageNet notebook.  The text encoder comes in as a callable
``encode_text(list[str]) -> (len, D) array`` so this module does not depend
on the model code (pass a feature-cached encoder to encode prompts once).
"""
import numpy as np

from .base import Head, as_features, l2_normalize
from .templates import class_prompts


def text_classifier_weights(class_names, encode_text, templates="imagenet7",
                            domain_suffix=True):
    """(C, D) float32 unit-norm class weights.

    class_names: raw names ('Thu-dog_Shiba_Dog') or already clean ones.
    All C x T prompts go to ``encode_text`` in one call, so it can batch.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    prompts = [class_prompts(n, templates, domain_suffix) for n in class_names]
    per_class = len(prompts[0])
    flat = [p for ps in prompts for p in ps]
    emb = np.asarray(encode_text(flat))
    if emb.ndim != 2 or emb.shape[0] != len(flat):
        raise ValueError(f"encode_text returned shape {emb.shape} for {len(flat)} prompts")
    emb = as_features(emb, "text embeddings", normalised=False,
                      dtype=np.float64)
    emb = l2_normalize(emb).reshape(len(class_names), per_class, -1)
    return l2_normalize(emb.mean(axis=1)).astype(np.float32)


class ZeroShot(Head):
    """logits = logit_scale * f . W_t^T; nothing to fit."""

    _state_keys = ("text_weights",)

    def __init__(self, text_weights=None, logit_scale=100.0):
        self.logit_scale = float(logit_scale)
        self.text_weights = None
        if text_weights is not None:
            self.fit(text_weights)

    def fit(self, text_weights, *unused):
        self.text_weights = as_features(text_weights, "text_weights")
        return self

    def logits(self, features):
        self._check_fitted()
        x = as_features(features, dim=self.text_weights.shape[1])
        return self.logit_scale * (x @ self.text_weights.T.astype(x.dtype))
