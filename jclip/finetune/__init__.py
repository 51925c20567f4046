"""Fine-tuning ConvNeXt-V2 (the contest's dog head).

    from jclip import finetune
    r = finetune.train(weights, "shots.txt", labels=(244, 373), out="dogs.safetensors")
    model = finetune.load_finetuned(weights, "dogs.safetensors")
    kept, top, probs = finetune.predict(model, paths, k=5)

Modules: ``data`` (label ranges, lists, image batches), ``model`` (trunk /
tail split, head files), ``training`` (loss, schedule, loop), ``prediction``
(top-k), ``cli`` (``python -m jclip.finetune``).
"""
import importlib
from typing import Any

# Imported on first use: the models (and Jittor, oneDNN) load only when one of
# these is asked for, so reading a head file (``finetune.files``) needs none.
_WHERE = {"parse_label_range": "data", "read_list": "data", "load_finetuned": "model",
          "predict": "prediction", "train": "training"}

__all__ = ["train", "load_finetuned", "predict", "parse_label_range", "read_list"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
