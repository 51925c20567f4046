"""Few-shot heads on cached, L2-normalised CLIP features: features -> logits.

Every head is a scikit-learn style estimator (see ``base``): the constructor
stores hyper-parameters and class-defining inputs (``text_weights``; for
CoOp/CoCoOp the model and class names) unchanged;
``fit(features, labels=None, val_features=None, val_labels=None) -> self``
validates and learns; fitted state ends in ``_``; ``logits(x)``,
``predict``, ``predict_topk(x, k)``, ``score``, ``save(path)`` /
``load(path)``, ``get_params()`` / ``set_params()``.  ``HEADS`` maps a method
name to its class and what a caller needs to build it.

The training-free and transductive heads (TransCLIP, TransCLIP-ZS, ZLaP, GDA,
APE, ProKeR) are exported like the others; ``description_weights`` builds class
weights from a ``{class: [sentences]}`` file.  CoOp and CoCoOp
(``jclip.heads.coop``, ``cocoop``) need Jittor and are not imported here;
``HEADS["coop"].cls`` imports them on use.
"""
from ..metrics import topk_ids
from .ape import APE
from .base import Head, l2_normalize, softmax
from .combine import combine
from .descriptions import DescriptionError, description_weights, read_descriptions
from .gda import GDA
from .inmap import InMaP, harden, learn_proxies, proxy_step, sinkhorn
from .linear_probe import LinearProbe
from .lpp import LPPlusPlus, lpp_init_alpha, lpp_init_weights, lpp_lr_alpha, lpp_lr_w
from .proker import ProKeR
from .registry import HEADS, HeadSpec, load_head
from .templates import (DOMAIN_SUFFIXES, IMAGENET_7_TEMPLATES, IMAGENET_80_TEMPLATES,
                        SINGLE_TEMPLATE, class_prompts, clean_class_name, get_templates)
from .tip_adapter import TipAdapter, TipAdapterF, search_grid
from .transclip import TransCLIP, TransCLIPZeroShot
from .zeroshot import ZeroShot, text_classifier_weights
from .zlap import ZLaP

__all__ = [
    "Head", "HEADS", "HeadSpec", "load_head", "l2_normalize", "softmax", "topk_ids", "combine",
    "InMaP", "harden", "learn_proxies", "proxy_step", "sinkhorn",
    "LinearProbe", "LPPlusPlus", "lpp_init_alpha", "lpp_init_weights",
    "lpp_lr_alpha", "lpp_lr_w",
    "DOMAIN_SUFFIXES", "IMAGENET_7_TEMPLATES", "IMAGENET_80_TEMPLATES",
    "SINGLE_TEMPLATE", "class_prompts", "clean_class_name", "get_templates",
    "TipAdapter", "TipAdapterF", "search_grid", "ZeroShot", "text_classifier_weights",
    "TransCLIP", "TransCLIPZeroShot", "ZLaP", "GDA", "APE", "ProKeR",
    "DescriptionError", "description_weights", "read_descriptions",
]
