"""jclip: Jittor CLIP and few-shot image classification.

Importing jclip first sets safe Jittor defaults (no CUDA build without a GPU,
the system oneDNN instead of a download; a user's own environment settings
win).  Jittor itself is imported only when a model is used, so the
torch-free converter and the numpy heads start instantly.

    model, preprocess = jclip.load("ViT-B/32")
    tokens = jclip.tokenize(["a photo of a dog."])

Public API (each documented where it lives): ``load``, ``available_models``,
``use_device``, ``weights_sha256`` (models/load.py; ``load`` in pretrained.py); ``tokenize``
(models/tokenizer.py); ``encode_images``, ``encode_image_files``,
``encode_texts`` (features/encode.py); ``Preprocess``, ``load_images``
(data/images.py); ``build_model``, ``CLIP`` (models/clip.py);
``add_model_config`` (catalog/store.py).
"""
from typing import TYPE_CHECKING, Any, List

from .jittor_env import configure as _configure

_configure()

__version__ = "0.1.0"

# name -> submodule; resolved on first use (PEP 562) so `import jclip` is cheap.
_LAZY = {
    "available_models": "models.load", "load": "pretrained", "use_device": "models.load",
    "weights_sha256": "models.load", "add_model_config": "catalog",
    "encode_images": "features.encode", "encode_image_files": "features.encode",
    "encode_texts": "features.encode",
    "build_model": "models.clip", "CLIP": "models.clip",
    "tokenize": "models.tokenizer",
    "Preprocess": "data.images", "load_images": "data.images",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # the real signatures for type checkers and IDEs; never run
    from .data.images import Preprocess, load_images  # noqa: F401
    from .features.encode import encode_image_files, encode_images, encode_texts  # noqa: F401
    from .models.clip import CLIP, build_model  # noqa: F401
    from .models.load import available_models, use_device, weights_sha256  # noqa: F401
    from .pretrained import load  # noqa: F401
    from .models.tokenizer import tokenize  # noqa: F401
    from .catalog import add_model_config  # noqa: F401


def __getattr__(name: str) -> Any:
    """The public API's names, imported on first use (PEP 562)."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jclip' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
