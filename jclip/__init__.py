"""jclip: Jittor CLIP and few-shot image classification.

Importing jclip first sets safe Jittor defaults (no CUDA build without a GPU,
the system oneDNN instead of a download; a user's own environment settings
win).  Jittor itself is imported only when a model is used, so the
torch-free converter and the numpy heads start instantly.

    model, preprocess = jclip.load("ViT-B/32")
    tokens = jclip.tokenize(["a photo of a dog."])
"""
from .jittor_env import configure as _configure

_configure()

__version__ = "0.1.0"

# name -> submodule; resolved on first use (PEP 562) so `import jclip` is cheap.
_LAZY = {
    "available_models": "models.load", "load": "models.load", "use_device": "models.load",
    "weights_sha256": "models.load",
    "encode_images": "features.encode", "encode_image_files": "features.encode",
    "encode_texts": "features.encode",
    "build_model": "models.clip", "CLIP": "models.clip",
    "tokenize": "models.tokenizer",
    "Preprocess": "data.images", "load_images": "data.images",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jclip' has no attribute {name!r}")
