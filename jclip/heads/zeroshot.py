"""Zero-shot CLIP classifier weights from class names and prompt templates.

Class weight = normalise(mean over templates of normalised text embeddings),
as in CLIP's ImageNet notebook.  The text encoder comes in as a callable
``encode_text(list[str]) -> (len, D) array`` so this module does not depend
on the model code (pass a feature-cached encoder to encode prompts once).
"""
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .base import Head, as_features, check_number, l2_normalize
from ..file_schema import Array, Float
from .templates import class_prompts


def text_classifier_weights(class_names: Sequence[str], encode_text: Callable,
                            templates: Union[str, Sequence[str]] = "imagenet7",
                            domain_suffix: bool = True) -> np.ndarray:
    """(C, D) float32 unit-norm class weights.

    Parameters: class_names: raw names ('Thu-dog_Shiba_Dog') or already clean
    ones; encode_text(list[str]) -> (len, D) embeddings (all C x T prompts go
    in one call, so it can batch); templates: a set name or a list of
    templates; domain_suffix: add ", a type of dog." etc. from the raw name.
    Returns: (C, D) float32 unit rows.
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
    """CLIP zero-shot: logits = logit_scale * f . W_t^T; fit only checks and stores.

    Parameters: text_weights (C, D) unit class embeddings (see
    ``text_classifier_weights``); logit_scale: CLIP's 100.
    """

    _fitted = ("text_weights_", "logit_scale_")
    fitted_spec = {"text_weights_": Array("f", ("C", "D")), "logit_scale_": Float()}

    def __init__(self, text_weights: Optional[np.ndarray] = None, logit_scale: float = 100.0):
        self._keep_params(locals())

    def check_params(self):
        """``logit_scale`` checked (see ``Head.check_params``)."""
        p = super().check_params()
        p["logit_scale"] = check_number("logit_scale", p["logit_scale"])
        return p

    def fit(self, features: Optional[np.ndarray] = None, labels=None, val_features=None,
            val_labels=None) -> "ZeroShot":
        """Check and store ``text_weights`` (nothing is learned).

        Parameters: features, when given, are only checked against the text
        width; labels and the validation split are ignored.
        Returns: self.
        """
        t = self._text_weights()
        self.logit_scale_ = self.check_params()["logit_scale"]
        if features is not None:
            as_features(features, dim=t.shape[1])
        self.text_weights_ = t
        return self

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) = logit_scale * features . text_weights^T."""
        self._check_fitted()
        x = as_features(features, dim=self.text_weights_.shape[1])
        return self.logit_scale_ * (x @ self.text_weights_.T.astype(x.dtype))
