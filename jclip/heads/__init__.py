"""Few-shot heads on cached, L2-normalised CLIP features.

Every head: constructor = hyper-parameters, ``fit(...)``, ``logits(x)``,
``predict_topk(x, k)``, ``state_dict()`` / ``load_state_dict()``,
``save(path)`` / ``load(path)``.
"""
from .base import Head, l2_normalize, softmax, topk_ids
from .combine import combine
from .inmap import InMaP, harden, learn_proxies, proxy_step, sinkhorn
from .linear_probe import LinearProbe
from .lpp import LPPlusPlus, lpp_init_alpha, lpp_init_weights, lpp_lr_alpha, lpp_lr_w
from .templates import (DOMAIN_SUFFIXES, IMAGENET_7_TEMPLATES, IMAGENET_80_TEMPLATES,
                        SINGLE_TEMPLATE, class_prompts, clean_class_name, get_templates)
from .tip_adapter import TipAdapter, TipAdapterF, search_grid
from .zeroshot import ZeroShot, text_classifier_weights

__all__ = [
    "Head", "l2_normalize", "softmax", "topk_ids", "combine",
    "InMaP", "harden", "learn_proxies", "proxy_step", "sinkhorn",
    "LinearProbe", "LPPlusPlus", "lpp_init_alpha", "lpp_init_weights",
    "lpp_lr_alpha", "lpp_lr_w",
    "DOMAIN_SUFFIXES", "IMAGENET_7_TEMPLATES", "IMAGENET_80_TEMPLATES",
    "SINGLE_TEMPLATE", "class_prompts", "clean_class_name", "get_templates",
    "TipAdapter", "TipAdapterF", "search_grid", "ZeroShot", "text_classifier_weights",
]
