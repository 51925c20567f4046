"""jclip: Jittor CLIP and few-shot image classification.

Importing jclip first sets safe Jittor defaults (no CUDA build without a GPU,
the system oneDNN instead of a download; a user's own environment settings
win).  Jittor itself is imported only when a model is used, so the
torch-free converter and the numpy heads start instantly.

    model, preprocess = jclip.load("ViT-B/32")
    tokens = jclip.tokenize(["a photo of a dog."])
"""
from ._jittor_env import configure as _configure

_configure()

__version__ = "0.1.0"

# name -> submodule; resolved on first use (PEP 562) so `import jclip` is cheap.
_LAZY = {
    "available_models": "clip", "load": "clip", "use_device": "clip", "weights_sha256": "clip",
    "encode_images": "clip", "encode_image_files": "clip", "encode_texts": "clip",
    "build_model": "model", "CLIP": "model",
    "tokenize": "tokenizer",
    "Preprocess": "preprocess", "load_images": "preprocess",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jclip' has no attribute {name!r}")
